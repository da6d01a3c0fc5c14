// stage1.cpp: compiled at first use by mpnn.native (see mpnn/stage1_kernel.py).
#include <cmath>
#include <cstdint>
#include <cstring>

typedef float v8 __attribute__((vector_size(32)));
typedef float v16 __attribute__((vector_size(64)));

// V: the vector type (8 or 16 floats, L lanes), NV vectors per pixel: C = L * NV channels
template <typename V> static inline V vload(const float* p) { V v; std::memcpy(&v, p, sizeof v); return v; }
template <typename V> static inline void vstore(float* p, V v) { std::memcpy(p, &v, sizeof v); }
template <typename V> static inline V vmax(V a, V b) { return a > b ? a : b; }
template <typename V> constexpr int lanes() { return sizeof(V) / sizeof(float); }

// Block 1 of one image into feats (196, C): see the module docstring.
template <typename V, int NV>
static void block1(const float* x, const float* w, const float* b, float* feats) {
  constexpr int L = lanes<V>(), C = L * NV;
  float pad[32 * 32];
  std::memset(pad, 0, sizeof pad);
  for (int r = 0; r < 28; ++r) std::memcpy(pad + (r + 2) * 32 + 2, x + r * 28, 28 * sizeof(float));
  const V zero = {};
  V bias[NV];
  for (int j = 0; j < NV; ++j) bias[j] = vload<V>(b + L * j);
  for (int ph = 0; ph < 14; ++ph) {
    for (int pw = 0; pw < 14; ++pw) {
      V a[4][NV];
      for (int p = 0; p < 4; ++p)
        for (int j = 0; j < NV; ++j) a[p][j] = zero;
      const float* top = pad + (2 * ph) * 32 + 2 * pw;
      for (int r = 0; r < 5; ++r) {
        const float* r0 = top + r * 32;
        const float* r1 = r0 + 32;
#pragma GCC unroll 5
        for (int c = 0; c < 5; ++c) {
          const float* wk = w + (r * 5 + c) * C;
          const float v0 = r0[c], v1 = r0[c + 1], v2 = r1[c], v3 = r1[c + 1];
#pragma GCC unroll 4
          for (int j = 0; j < NV; ++j) {
            const V wv = vload<V>(wk + L * j);
            a[0][j] += v0 * wv;
            a[1][j] += v1 * wv;
            a[2][j] += v2 * wv;
            a[3][j] += v3 * wv;
          }
        }
      }
      float* o = feats + (ph * 14 + pw) * C;
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j)
        vstore<V>(o + L * j, vmax<V>(vmax<V>(vmax<V>(a[0][j], a[1][j]), vmax<V>(a[2][j], a[3][j])) + bias[j], zero));
    }
  }
}

// Exit 1 of one image's features: logits (K,) = hb + hw (K, 49 C) . maxpool2(feats); returns H.
template <typename V, int NV>
static double exit1(const float* feats, int K, const float* hw, const float* hb, float* logits) {
  constexpr int L = lanes<V>(), C = L * NV;
  float pooled[49 * C];
  for (int i = 0; i < 7; ++i)
    for (int j = 0; j < 7; ++j)
      for (int v = 0; v < NV; ++v) {
        const float* f = feats + ((2 * i) * 14 + 2 * j) * C + L * v;
        vstore<V>(pooled + (i * 7 + j) * C + L * v,
                  vmax<V>(vmax<V>(vload<V>(f), vload<V>(f + C)), vmax<V>(vload<V>(f + 14 * C), vload<V>(f + 15 * C))));
      }
  double zmax = -INFINITY;
  for (int k = 0; k < K; ++k) {
    const float* wk = hw + (int64_t)k * 49 * C;
    V s = {};
    for (int i = 0; i < 49 * C; i += L) s += vload<V>(wk + i) * vload<V>(pooled + i);
    float z = hb[k];
    for (int l = 0; l < L; ++l) z += s[l];
    logits[k] = z;
    zmax = z > zmax ? z : zmax;
  }
  double sum = 0.0, dot = 0.0;
  for (int k = 0; k < K; ++k) {
    const double e = std::exp((double)logits[k] - zmax);
    sum += e;
    dot += e * ((double)logits[k] - zmax);
  }
  return (std::log(sum) - dot / sum) / std::log((double)K);   // -sum p log p / log K
}

template <typename V, int NV>
static int64_t run(int64_t n, const float* x, const float* w, const float* b, int K, const float* hw,
                   const float* hb, float threshold, int write_all, float* feats_out, float* logits,
                   int64_t* stay_rows) {
  constexpr int C = lanes<V>() * NV;
  float scratch[196 * C];
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    float* feats = write_all ? feats_out + i * 196 * C : scratch;
    block1<V, NV>(x + i * 784, w, b, feats);
    if (hw == nullptr) continue;
    const double H = exit1<V, NV>(feats, K, hw, hb, logits + i * K);
    if (!write_all && !(H < (double)threshold)) {
      std::memcpy(feats_out + kept * 196 * C, scratch, sizeof scratch);
      stay_rows[kept++] = i;
    }
  }
  return write_all ? n : kept;
}

// x (n, 28, 28); w (25, C) tap-major; b (C,); hw (K, 49 C) or null (no exit); hb (K,).
// write_all: every image's features into feats_out (n, 196, C); else only the staying ones, packed,
// with their row numbers in stay_rows. Returns the rows written, or -1 for an unsupported C or K.
extern "C" int64_t mpnn_stage1(int64_t n, int C, const float* x, const float* w, const float* b, int K,
                               const float* hw, const float* hb, float threshold, int write_all,
                               float* feats_out, float* logits, int64_t* stay_rows) {
  if (hw != nullptr && (K < 1 || K > 64)) return -1;
  switch (C) {
    case 8: return run<v8, 1>(n, x, w, b, K, hw, hb, threshold, write_all, feats_out, logits, stay_rows);
    case 16: return run<v16, 1>(n, x, w, b, K, hw, hb, threshold, write_all, feats_out, logits, stay_rows);
    case 32: return run<v16, 2>(n, x, w, b, K, hw, hb, threshold, write_all, feats_out, logits, stay_rows);
    default: return -1;
  }
}
