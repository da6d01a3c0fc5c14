// tag_steps.cpp: compiled at first use by mpnn.native (see mpnn/stacked_sgd.py).
// tag_steps of mpnn/stacked_sgd.py, every operation of a step in one pass over plain arrays.
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <vector>

static inline float clampf(float v, float c) { return v < -c ? -c : (v > c ? c : v); }

// the window taps x[k,h] = rowf[taps[k,h]] of one block (local), in units of 1/255: the image row
// (P values in [0, 1]) times 255 (exact for k/255 values), and a 0 at P for the skipped taps
template <typename X>
static void scale_row(const X* __restrict row, int64_t width, float scale, float* __restrict rowf) {
  for (int64_t p = 0; p < width; ++p) rowf[p] = (float)row[p] * scale;
  rowf[width] = 0.f;
}

// the gather stays scalar: vgatherdps is slow on AMD Zen and on Intel CPUs with the GDS mitigation
__attribute__((optimize("no-tree-vectorize")))
static void gather(const float* __restrict rowf, const int32_t* __restrict taps, int n, float* __restrict out) {
  for (int i = 0; i < n; ++i) out[i] = rowf[taps[i]];
}

// pre = b1 + W1 x (local: alpha/255 * sum_k x[k,h] W1[k,h]; full: sum_p W1[h,p] x[p])
template <typename X>
static void hidden_pre(int local, const X* x, const float* W1, const float* b1, int K, int Hb, float* pre) {
  if (local) {
    float s[1024];
    for (int h = 0; h < Hb; ++h) s[h] = 0.f;
    for (int k = 0; k < K; ++k)
      for (int h = 0; h < Hb; ++h) s[h] += (float)x[k * Hb + h] * W1[k * Hb + h];
    for (int h = 0; h < Hb; ++h) pre[h] = b1[h] + (1.0f / 255.0f) * s[h];
  } else {
    for (int h = 0; h < Hb; ++h) {
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      const float* w = W1 + (int64_t)h * K;
      int p = 0;
      for (; p + 8 <= K; p += 8)
        for (int l = 0; l < 8; ++l) acc[l] += w[p + l] * (float)x[p + l];
      float t = 0.f;
      for (; p < K; ++p) t += w[p] * (float)x[p];
      for (int l = 0; l < 8; ++l) t += acc[l];
      pre[h] = b1[h] + t;
    }
  }
}

static float dot8(const float* a, const float* b, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  float t = 0.f;
  for (; i < n; ++i) t += a[i] * b[i];
  for (int l = 0; l < 8; ++l) t += acc[l];
  return t;
}

// W1 += lr clip(d x^T) (clamp skipped when within), b1 += lr d
template <typename X>
static void update_hidden(int local, const X* x, const float* d, float* W1, float* b1, int K, int Hb,
                          float lr, float clip, int within) {
  if (local) {
    for (int k = 0; k < K; ++k) {
      float* w = W1 + k * Hb;
      const X* xk = x + k * Hb;
      if (within)
        for (int h = 0; h < Hb; ++h) w[h] += (lr / 255.0f) * (float)xk[h] * d[h];
      else
        for (int h = 0; h < Hb; ++h) w[h] += lr * clampf((float)xk[h] * (d[h] * (1.0f / 255.0f)), clip);
    }
  } else {
    for (int h = 0; h < Hb; ++h) {
      float* w = W1 + (int64_t)h * K;
      const float dh = d[h];
      if (dh == 0.f) continue;
      if (within)
        for (int p = 0; p < K; ++p) w[p] += lr * dh * (float)x[p];
      else
        for (int p = 0; p < K; ++p) w[p] += lr * clampf(dh * (float)x[p], clip);
    }
  }
  for (int h = 0; h < Hb; ++h) b1[h] += lr * d[h];
}

template <typename X>
static int64_t steps(int64_t T, const int64_t* code, const int64_t* lo_of, const int64_t* hi_of,
                     const uint8_t* masked, int local, const X* inputs, int64_t row, const int64_t* at,
                     const int32_t* taps, const int64_t* tab_of, float scale,
                     const float* mask_all, const float* onehot, float* W1b, float* b1b, float* W2b,
                     float* b2, const int64_t* own, int M, int nb, int K, int Hb, int C,
                     float lr, float clip, float slope) {
  std::vector<float> pre((size_t)nb * Hb), a((size_t)nb * Hb), d((size_t)nb * Hb), z((size_t)M * C),
      err((size_t)M * C), back(Hb), xbuf(local ? (size_t)nb * K * Hb : 1),
      rowf(local ? (size_t)row + 1 : 1);
  const int64_t w1 = (int64_t)K * Hb, w2 = (int64_t)C * Hb;
  int64_t clipped = 0;
  for (int64_t i = 0; i < T; ++i) {
    const int c = (int)code[i], lo = (int)lo_of[c], hi = (int)hi_of[c], msk = masked[c];
    const float* mask = mask_all + i * nb;
    memcpy(z.data(), b2, sizeof(float) * M * C);
    for (int j = lo; j < hi; ++j) {                       // forward: a = m leaky(W1 x + b1), z += W2 a
      const X* x = inputs + at[i * nb + j] * row;
      float* pj = &pre[(size_t)j * Hb];
      float* aj = &a[(size_t)j * Hb];
      float* xj = xbuf.data() + (local ? j * w1 : 0);
      if (local) scale_row(x, row, scale, rowf.data());
      if (local) gather(rowf.data(), taps + tab_of[j] * w1, (int)w1, xj);
      if (local) hidden_pre(local, (const float*)xj, W1b + j * w1, b1b + (int64_t)j * Hb, K, Hb, pj);
      else hidden_pre(local, x, W1b + j * w1, b1b + (int64_t)j * Hb, K, Hb, pj);
      const float mj = msk ? mask[j] : 1.f;
      for (int h = 0; h < Hb; ++h) {
        float v = pj[h] > 0.f ? pj[h] : pj[h] * slope;
        aj[h] = msk ? v * mj : v;
      }
      float* zm = &z[(size_t)own[j] * C];
      for (int cc = 0; cc < C; ++cc) zm[cc] += dot8(W2b + j * w2 + (int64_t)cc * Hb, aj, Hb);
    }
    for (int m = 0; m < M; ++m) {                         // e = onehot - softmax(z)
      const float* zm = &z[(size_t)m * C];
      float mx = zm[0];
      for (int cc = 1; cc < C; ++cc) mx = zm[cc] > mx ? zm[cc] : mx;
      float s = 0.f;
      for (int cc = 0; cc < C; ++cc) { err[(size_t)m * C + cc] = expf(zm[cc] - mx); s += err[(size_t)m * C + cc]; }
      for (int cc = 0; cc < C; ++cc)
        err[(size_t)m * C + cc] = onehot[(i * M + m) * C + cc] - err[(size_t)m * C + cc] / s;
    }
    float dmax = 0.f;
    for (int j = lo; j < hi; ++j) {                       // d = m leaky'(pre) W2^T e, then W2 += lr clip(e a^T)
      const float* e = &err[(size_t)own[j] * C];
      float* W2 = W2b + j * w2;
      const float* pj = &pre[(size_t)j * Hb];
      const float* aj = &a[(size_t)j * Hb];
      float* dj = &d[(size_t)j * Hb];
      for (int h = 0; h < Hb; ++h) back[h] = 0.f;
      for (int cc = 0; cc < C; ++cc)
        for (int h = 0; h < Hb; ++h) back[h] += e[cc] * W2[cc * Hb + h];
      const float mj = msk ? mask[j] : 1.f;
      for (int h = 0; h < Hb; ++h) {
        float v = pj[h] > 0.f ? back[h] : back[h] * slope;
        v = msk ? v * mj : v;
        dj[h] = v;
        float av = fabsf(v);
        dmax = av > dmax ? av : dmax;
      }
      for (int cc = 0; cc < C; ++cc)
        for (int h = 0; h < Hb; ++h) W2[cc * Hb + h] += lr * clampf(e[cc] * aj[h], clip);
    }
    for (int k = 0; k < M * C; ++k) b2[k] += lr * err[k];
    const int within = dmax <= clip;
    clipped += within ? 0 : 1;
    for (int j = lo; j < hi; ++j) {
      const X* x = inputs + at[i * nb + j] * row;
      if (local) update_hidden(local, (const float*)xbuf.data() + j * w1, &d[(size_t)j * Hb], W1b + j * w1, b1b + (int64_t)j * Hb, K, Hb, lr, clip, within);
      else update_hidden(local, x, &d[(size_t)j * Hb], W1b + j * w1, b1b + (int64_t)j * Hb, K, Hb, lr, clip, within);
    }
  }
  return clipped;
}

extern "C" int64_t mpnn_tag_steps(int64_t T, const int64_t* code, const int64_t* lo_of, const int64_t* hi_of,
    const uint8_t* masked, int local, int u8, const void* inputs, int64_t row, const int64_t* at,
    const int32_t* taps, const int64_t* tab_of, float scale, const float* mask_all, const float* onehot, float* W1b, float* b1b, float* W2b, float* b2,
    const int64_t* own, int M, int nb, int K, int Hb, int C, float lr, float clip, float slope) {
  if (u8)
    return steps(T, code, lo_of, hi_of, masked, local, (const uint8_t*)inputs, row, at, taps, tab_of, scale, mask_all, onehot,
                 W1b, b1b, W2b, b2, own, M, nb, K, Hb, C, lr, clip, slope);
  return steps(T, code, lo_of, hi_of, masked, local, (const float*)inputs, row, at, taps, tab_of, scale, mask_all, onehot,
               W1b, b1b, W2b, b2, own, M, nb, K, Hb, C, lr, clip, slope);
}
