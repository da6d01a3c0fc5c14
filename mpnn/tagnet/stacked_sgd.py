"""Per-sample SGD, eq. (2) of :mod:`mpnn.tagnet`, for many networks at once, hand-derived.

:class:`StackedSGD` trains the ``M`` networks of a :class:`mpnn.tagnet.stacked_nets.StackedNets` in
lock-step: step ``i`` of a schedule (T, M) feeds sample ``schedule[i, m]`` to network ``m``, and
one step is about 25 tensor operations whatever ``M`` is. The pieces, each chosen once per
:meth:`StackedSGD.fit`:

* *routing* -- :class:`TagRouting` (a TagNet's tag is its label's parity) or :class:`GateRouting`
  (a MoE's gate picks the expert, and learns). Tag routing orders the blocks so that a step
  only computes the blocks that can be active: the tag-0 halves of every *blocked* partitioned
  network (one whose tag changes at most once per 50 steps) first, their tag-1 halves last, every
  other network's two halves in between. While all blocked networks are on the same tag (all but
  the few hundred steps per epoch where the seeds' even blocks end at different places) the active
  blocks are one contiguous slice and the idle halves cost nothing. Other blocks are computed
  with a 0/1 mask; a masked block has ``a = 0`` and ``d = 0``, so neither its weights nor the
  shared output columns change, as (2) says.
* *inputs* -- :class:`WindowInputs` (local networks: the 5x5 windows of every image the schedule
  visits, gathered once per (layout, half), uint8 when ``X`` holds k/255 values as MNIST does, so
  a step reads its inputs with one row copy) or :class:`PixelInputs` (fully connected: the rows).
* *steps* -- :func:`tag_steps` or :func:`gate_steps`, the step loops, run by TorchScript (no Python
  between the operations of a step; :func:`step_loop`) or eagerly, with the same operations in
  the same order either way; or, for tag routing on the CPU, :func:`fused_tag_steps`: the same
  equations in one C++ loop over plain arrays (:data:`_FUSED_SOURCE`, compiled at first use with
  g++ and cached; the windows gathered per step from the pixel rows, :class:`TapInputs`), equal to
  the torch loop to float rounding (its sums run in another order). Without a compiler, or with
  ``MPNN_FUSED=0`` / ``fit(fused=False)``, the torch loop runs.

The output gradients ``e a^T`` are always clamped; the hidden ones ``d x^T`` only when some
``|d|`` exceeds the bound (as ``x`` is in [0, 1], none can otherwise), so that their update is
usually one fused ``addcmul``. :func:`mpnn.tagnet.reference_sgd` is the autograd loop it is
tested against.
"""
from __future__ import annotations

from typing import Callable, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..infra import determinism, native
from .stacked_nets import StackedNets
from .network import PARITY

__all__ = ["StackedSGD", "TagRouting", "GateRouting", "WindowInputs", "TapInputs", "PixelInputs",
           "tag_steps", "gate_steps", "step_loop", "fused_kernel", "fused_tag_steps",
           "BLOCKED_EVERY"]

BLOCKED_EVERY = 50       # a partitioned network whose tag changes at most once per 50 steps is "blocked"


# ------------------------------------------------------------------ one step, in pieces (TorchScript)

def _hidden_pre(local: bool, xin: torch.Tensor, W1: torch.Tensor, b1: torch.Tensor) -> torch.Tensor:
    """``W1 x + b1`` per block (n, Hb): windows ``xin`` (n, K, Hb) in units of 1/255, or pixels (n, P)."""
    if local:
        return torch.add(b1, (xin * W1).sum(1), alpha=1.0 / 255)
    return torch.add(b1, (W1 * xin.unsqueeze(1)).sum(2))


def _output_error(a: torch.Tensor, W2: torch.Tensor, b2: torch.Tensor, own: torch.Tensor,
                  onehot: torch.Tensor):
    """``e = onehot(y) - softmax(W2 a + b2)`` per model (M, C), per block (n, C), and ``W2^T e`` (n, Hb)."""
    zb = (W2 * a.unsqueeze(1)).sum(2)                                         # (n, C)
    z = torch.index_add(b2, 0, own, zb)                  # (M, C), blocks added in block order
    err = onehot - torch.softmax(z, 1)
    eb = err.index_select(0, own)
    back = torch.bmm(eb.unsqueeze(1), W2).squeeze(1)                          # W2 before its update
    return err, eb, back


def _update_output(W2: torch.Tensor, b2: torch.Tensor, eb: torch.Tensor, err: torch.Tensor,
                   a: torch.Tensor, lr: float, clip: float) -> None:
    """``W2 += lr clip(e a^T)``, ``b2 += lr e``."""
    W2.add_((eb.unsqueeze(2) * a.unsqueeze(1)).clamp_(-clip, clip), alpha=lr)
    b2.add_(err, alpha=lr)


def _update_hidden(local: bool, W1: torch.Tensor, b1: torch.Tensor, xin: torch.Tensor,
                   d: torch.Tensor, lr: float, clip: float, within: bool) -> None:
    """``W1 += lr clip(d x^T)`` (the clamp skipped when every ``|d| <= clip``), ``b1 += lr d``."""
    if within:
        if local:
            W1.addcmul_(xin, d.unsqueeze(1), value=lr / 255)
        else:
            W1.addcmul_(d.unsqueeze(2), xin.unsqueeze(1), value=lr)
    else:
        g1 = xin.mul_((d * (1.0 / 255)).unsqueeze(1)) if local else d.unsqueeze(2) * xin.unsqueeze(1)
        W1.add_(g1.clamp_(-clip, clip), alpha=lr)
    b1.add_(d, alpha=lr)


def _update_gate(Wg: torch.Tensor, bg: torch.Tensor, xg: torch.Tensor, ds: torch.Tensor,
                 lr: float, clip: float, within: bool) -> None:
    """``Wg += lr clip(ds x^T)``, ``bg += lr ds``."""
    if within:
        Wg.addcmul_(ds.unsqueeze(2), xg.unsqueeze(1), value=lr)
    else:
        Wg.add_((ds.unsqueeze(2) * xg.unsqueeze(1)).clamp_(-clip, clip), alpha=lr)
    bg.add_(ds, alpha=lr)


def tag_steps(code: List[int], lo_of: List[int], hi_of: List[int], masked: List[bool], local: bool,
              inputs: torch.Tensor, at: torch.Tensor, mask_all: torch.Tensor, onehot: torch.Tensor,
              W1b: torch.Tensor, b1b: torch.Tensor, W2b: torch.Tensor, b2: torch.Tensor,
              own: torch.Tensor, lr: float, clip: float, slope: float) -> int:
    """Eq. (2) with tag routing for the steps of one chunk; returns how many clamped ``d x^T``.

    Step ``i`` computes the blocks ``lo_of[c]:hi_of[c]`` of its slice ``c = code[i]`` (masked by
    ``mask_all[i]`` when ``masked[c]``), reading block ``j``'s input ``inputs[at[i, j]]``.
    """
    clipped = 0
    for i in range(len(code)):
        c = code[i]
        lo, hi = lo_of[c], hi_of[c]
        W1, b1, W2 = W1b[lo:hi], b1b[lo:hi], W2b[lo:hi]
        xin = inputs.index_select(0, at[i, lo:hi]).float()
        pre = _hidden_pre(local, xin, W1, b1)
        act = F.leaky_relu(pre, slope)
        mask = mask_all[i, lo:hi].unsqueeze(1)                                # (n, 1)
        a = act * mask if masked[c] else act
        err, eb, back = _output_error(a, W2, b2, own[lo:hi], onehot[i])
        d = torch.ops.aten.leaky_relu_backward(back, pre, slope, False)
        if masked[c]:
            d = d * mask
        within = float(d.abs().amax()) <= clip
        clipped += 0 if within else 1
        _update_output(W2, b2, eb, err, a, lr, clip)
        _update_hidden(local, W1, b1, xin, d, lr, clip, within)
    return clipped


def gate_steps(local: bool, inputs: torch.Tensor, at: torch.Tensor, X: torch.Tensor,
               rows: torch.Tensor, onehot: torch.Tensor, W1b: torch.Tensor, b1b: torch.Tensor,
               W2b: torch.Tensor, b2: torch.Tensor, own: torch.Tensor, Wg: torch.Tensor,
               bg: torch.Tensor, lr: float, clip: float, slope: float) -> int:
    """Eq. (2) with a learned hard top-1 gate ``s = Wg x + bg`` for the steps of one chunk (every
    block computed, masked by the gate's expert); the gate learns ``ds = q (g - <q, g>)``,
    ``q = softmax(s)``, ``g_e = sum_{h in e} (W2^T e)_h a_h`` (straight-through). Returns how many
    steps clamped ``d x^T`` and ``ds x^T``."""
    clipped = 0
    experts = torch.arange(2, device=b2.device)
    for i in range(len(rows)):
        xin = inputs.index_select(0, at[i]).float()
        pre = _hidden_pre(local, xin, W1b, b1b)
        act = F.leaky_relu(pre, slope)
        xg = X.index_select(0, rows[i])                                       # (M, P)
        s = torch.add(bg, (Wg * xg.unsqueeze(1)).sum(2))                      # (M, 2)
        mask = (s.argmax(1).unsqueeze(1) == experts).float().view(-1, 1)      # (2M, 1)
        a = act * mask
        err, eb, back = _output_error(a, W2b, b2, own, onehot[i])
        d = torch.ops.aten.leaky_relu_backward(back, pre, slope, False) * mask
        q = torch.softmax(s, 1)
        g = (back * act).sum(1).view(-1, 2)                                   # d log p / d m_e
        ds = q * (g - (q * g).sum(1, keepdim=True))
        within = float(torch.cat([d.view(-1), ds.view(-1)]).abs_().amax()) <= clip
        clipped += 0 if within else 1
        _update_output(W2b, b2, eb, err, a, lr, clip)
        _update_hidden(local, W1b, b1b, xin, d, lr, clip, within)
        _update_gate(Wg, bg, xg, ds, lr, clip, within)
    return clipped


_SCRIPTED: dict = {}


def step_loop(loop: Callable, eager: bool = False) -> Callable:
    """``loop`` compiled by TorchScript (about half the time of a step at the chapter's sizes), or
    ``loop`` itself when ``eager`` or when scripting is unavailable."""
    if eager:
        return loop
    if loop not in _SCRIPTED:
        import warnings
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")               # torch.jit.script is deprecated
                _SCRIPTED[loop] = torch.jit.script(loop)
        except Exception:                                     # pragma: no cover - torch without TorchScript
            _SCRIPTED[loop] = loop
    return _SCRIPTED[loop]


# ------------------------------------------------------------------ the fused step loop (C++, built at run time)

_FUSED_SOURCE = native.source("tag_steps.cpp")      # mpnn/kernels/tag_steps.cpp

def fused_kernel():
    """The fused tag step loop (C++, :data:`_FUSED_SOURCE`), built on first use and cached by
    :func:`mpnn.infra.native.load`, or None where there is no C++ compiler or ``MPNN_FUSED=0`` (forces the
    pure-torch :func:`tag_steps`)."""
    import ctypes
    P, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    argtypes = [i64, P, P, P, P, i32, i32, P, i64, P, P, P, f32, P, P, P, P, P, P, P, i32, i32, i32, i32, i32,
                f32, f32, f32]
    return native.load("tag_steps", _FUSED_SOURCE, "mpnn_tag_steps", argtypes, i64)


def fused_tag_steps(fn, code: List[int], lo_of: List[int], hi_of: List[int], masked: List[bool],
                    inputs, at: torch.Tensor, mask_all: torch.Tensor,
                    onehot: torch.Tensor, W1b: torch.Tensor, b1b: torch.Tensor, W2b: torch.Tensor,
                    b2: torch.Tensor, own: torch.Tensor, lr: float, clip: float, slope: float) -> int:
    """:func:`tag_steps` (same arguments, same equations and update order) by the compiled ``fn``:
    the sums run in another order, so the weights agree with it to float rounding, not bitwise.
    ``inputs``: :class:`TapInputs` (local: every step gathers its windows from the image rows) or
    :class:`PixelInputs`."""
    local = inputs.local
    keep = [torch.tensor(code, dtype=torch.long), torch.tensor(lo_of, dtype=torch.long),
            torch.tensor(hi_of, dtype=torch.long), torch.tensor(masked, dtype=torch.uint8),
            inputs.inputs.contiguous(), at.contiguous(), mask_all.contiguous(), onehot.contiguous(),
            own.contiguous()]
    taps = (inputs.taps.data_ptr(), inputs.tab_of.data_ptr()) if local else (None, None)
    for t in (W1b, b1b, W2b, b2):
        if not t.is_contiguous() or t.dtype != torch.float32:
            raise ValueError("the fused step loop updates contiguous float32 weights in place")
    nb, Hb, C = b1b.shape[0], b1b.shape[1], b2.shape[1]
    K = W1b.shape[1] if local else W1b.shape[2]
    return int(fn(len(code), *(t.data_ptr() for t in keep[:4]), int(local), int(keep[4].dtype == torch.uint8),
                  keep[4].data_ptr(), keep[4][0].numel(), keep[5].data_ptr(), *taps, 255.0,
                  *(t.data_ptr() for t in keep[6:8]),
                  W1b.data_ptr(), b1b.data_ptr(), W2b.data_ptr(), b2.data_ptr(), keep[8].data_ptr(),
                  b2.shape[0], nb, K, Hb, C, lr, clip, slope))


# ------------------------------------------------------------------ inputs: where a block reads x

class WindowInputs:
    """Local networks: the window taps of every image the schedule visits, per (layout, half),
    ``(L * 2 * R, K, Hb)`` in units of 1/255 (uint8 when X holds k/255 values, else float32)."""

    local = True

    def __init__(self, nets: StackedNets, X: torch.Tensor, schedule: torch.Tensor, chunk: int = 4096):
        self.needed = schedule.unique()                                       # sorted rows
        self.inputs = self._gather(nets, X, self.needed, chunk)
        self.base = (nets.lay[nets.own] * 2 + nets.half) * len(self.needed)   # (nb,) after block order
        self.own = nets.own

    @staticmethod
    def _gather(nets: StackedNets, X: torch.Tensor, rows: torch.Tensor, chunk: int) -> torch.Tensor:
        X = F.pad(X.index_select(0, rows), (0, 1))                            # skipped taps -> 0
        X255 = (X * 255).round()
        X = X255.to(torch.uint8) if bool(torch.equal(X255 / 255, X)) else X * 255
        R, K, Hb = len(rows), nets.K, nets.Hb
        out = torch.empty(len(nets.layouts) * 2 * R, K, Hb, device=X.device, dtype=X.dtype)
        p = nets.perm.to(X.device)
        for l, index in enumerate(nets.layouts):
            for t in (0, 1):
                flat = index[p[t * Hb:(t + 1) * Hb]].T.flatten()             # (K*Hb,) tap-major
                base = (l * 2 + t) * R
                for s in range(0, R, chunk):
                    xs = X[s:s + chunk].index_select(1, flat)
                    out[base + s:base + s + len(xs)] = xs.view(-1, K, Hb)
        return out

    def at(self, rows: torch.Tensor) -> torch.Tensor:
        """(Tc, nb) row of ``inputs`` that each block reads at each step of ``rows`` (Tc, M)."""
        return self.base + torch.searchsorted(self.needed, rows)[:, self.own]


class TapInputs:
    """Local networks, for the fused step loop: the pixel rows ``X`` (N, P) themselves (the loop
    scales a row by 255, exactly the k of k/255 values, and gathers its windows), and the taps
    ``(L * 2, K, Hb)`` int32 of every (layout, half), ``P`` for a skipped tap."""

    local = True

    def __init__(self, nets: StackedNets, X: torch.Tensor, schedule: torch.Tensor):
        p, Hb = nets.perm.to(X.device), nets.Hb
        self.inputs = X
        self.taps = torch.stack([index[p[t * Hb:(t + 1) * Hb]].T for index in nets.layouts
                                 for t in (0, 1)]).to(torch.int32).contiguous()      # (L*2, K, Hb)
        self.tab_of = (nets.lay[nets.own] * 2 + nets.half).contiguous()            # (nb,)
        self.own = nets.own

    def at(self, rows: torch.Tensor) -> torch.Tensor:
        """(Tc, nb) pixel row that each block reads at each step of ``rows`` (Tc, M)."""
        return rows[:, self.own].contiguous()


class PixelInputs:
    """Fully connected networks: block ``j`` reads the pixel row of its model's sample."""

    local = False

    def __init__(self, nets: StackedNets, X: torch.Tensor, schedule: torch.Tensor):
        self.inputs, self.own = X, nets.own

    def at(self, rows: torch.Tensor) -> torch.Tensor:
        return rows[:, self.own].contiguous()


# ------------------------------------------------------------------ routing: which blocks a step computes

class TagRouting:
    """Tag = label parity. Orders the blocks (module docstring) and gives every step its slice:
    0 = every blocked network on tag 0, 1 = all on tag 1, 2 = mixed (every block)."""

    def __init__(self, nets: StackedNets, y: torch.Tensor, schedule: torch.Tensor):
        self.nets, self.y, self.parity = nets, y, PARITY.to(nets.device)
        blocked = self._blocked(schedule)
        nets.order_blocks(blocked)
        nb, n_p = 2 * nets.M, nets.n_p
        mixed = any(nets.partitioned[m] and not blocked[m] for m in range(nets.M))
        self.lo_of, self.hi_of = [0, n_p, 0], [nb - n_p, nb, nb]
        self.masked = [mixed, mixed, mixed or n_p > 0]
        self.unit = torch.tensor([not p for p in nets.partitioned], device=nets.device)[nets.own]
        self.blocked_idx = torch.tensor([m for m in range(nets.M) if blocked[m]], dtype=torch.long,
                                        device=nets.device)

    def _blocked(self, schedule: torch.Tensor) -> list[bool]:
        T, M = schedule.shape
        tags = self.parity[self.y[schedule]]                                  # (T, M)
        switches = (tags[1:] != tags[:-1]).sum(0).tolist() if T > 1 else [0] * M
        return [self.nets.partitioned[m] and switches[m] * BLOCKED_EVERY <= T for m in range(M)]

    def _codes(self, tags: torch.Tensor) -> list[int]:
        """Slice of each step from the tags (Tc, M) of its samples."""
        if not self.nets.n_p:
            return [2] * len(tags)
        tp = tags.index_select(1, self.blocked_idx)
        return torch.where((tp == 0).all(1), 0, torch.where((tp == 1).all(1), 1, 2)).tolist()

    def steps(self, rows, inputs, lr: float, clip: float, eager: bool, fused=None) -> int:
        """The steps of ``rows`` (Tc, M) by ``fused`` (:func:`fused_kernel`) when given, else by
        :func:`tag_steps` in eager torch (the compiled step loop replaced its TorchScript version)."""
        nets = self.nets
        tags = self.parity[self.y[rows]]                                      # (Tc, M)
        mask_all = ((tags[:, nets.own] == nets.half) | self.unit).float()    # (Tc, nb)
        onehot = torch.eye(nets.C, device=nets.device)[self.y[rows]]          # (Tc, M, C)
        if fused is not None:
            return fused_tag_steps(fused, self._codes(tags), self.lo_of, self.hi_of, self.masked,
                                   inputs, inputs.at(rows), mask_all, onehot, nets.W1b, nets.b1b,
                                   nets.W2b, nets.b2, nets.own, lr, clip, nets.slope)
        return tag_steps(
            self._codes(tags), self.lo_of, self.hi_of, self.masked, inputs.local, inputs.inputs,
            inputs.at(rows), mask_all, onehot, nets.W1b, nets.b1b, nets.W2b, nets.b2, nets.own,
            lr, clip, nets.slope)


class GateRouting:
    """Learned gate (MoE): every block is computed every step, masked by the gate's choice."""

    def __init__(self, nets: StackedNets, y: torch.Tensor, X: torch.Tensor):
        nets.order_blocks([False] * nets.M)                                   # model-major
        self.nets, self.y, self.X = nets, y, X

    def steps(self, rows, inputs, lr: float, clip: float, eager: bool, fused=None) -> int:
        """The gate's steps: TorchScript unless ``eager`` (no compiled gate loop exists, and the
        scripted one takes about half the eager time at the chapter's sizes)."""
        nets = self.nets
        onehot = torch.eye(nets.C, device=nets.device)[self.y[rows]]
        return step_loop(gate_steps, eager)(
            inputs.local, inputs.inputs, inputs.at(rows), self.X, rows, onehot, nets.W1b, nets.b1b,
            nets.W2b, nets.b2, nets.own, nets.Wg, nets.bg, lr, clip, nets.slope)


# ------------------------------------------------------------------ the trainer

def _chunk_bounds(T: int, plan_chunk: int, every: int) -> list[int]:
    """Chunk boundaries: every ``plan_chunk`` steps and every ``every`` steps (callbacks), and T."""
    return sorted(set(range(0, T, plan_chunk)) | (set(range(0, T, every)) if every else set()) | {T})


class StackedSGD:
    """Eq. (2) for the networks ``models`` in lock-step (one sample per network per step).

    ``X`` (N, P) in [0, 1] and ``y`` (N,) are held on ``device`` (default X's); the networks as a
    :class:`~mpnn.tagnet.stacked_nets.StackedNets` (``self.nets``: inference and export). ``clip`` is one
    bound for every network (``float("inf")`` switches clipping off).
    """

    def __init__(self, models: Sequence[nn.Module], X: torch.Tensor, y: torch.Tensor, *,
                 lr: float = 0.01, clip: float = 5.0, device=None):
        device = torch.device(device) if device is not None else X.device
        self.nets = StackedNets(models, device)
        if X.dim() != 2 or X.shape[1] != self.nets.P or len(X) != len(y):
            raise ValueError(f"X must be (N, {self.nets.P}) with one label per row; "
                             f"got X {tuple(X.shape)}, y {tuple(y.shape)}")
        if float(X.min()) < 0 or float(X.max()) > 1:
            raise ValueError("X must be scaled to [0, 1] (divide the uint8 images by 255)")
        if not clip > 0:
            raise ValueError(f"clip must be positive (float('inf') for no clipping), got {clip}")
        self.device, self.lr, self.clip = device, float(lr), float(clip)
        self.X = X.to(device, torch.float32).contiguous()                     # (N, P)
        self.y = y.to(device)
        self.clipped_steps = 0

    def _routing_and_inputs(self, schedule: torch.Tensor, fused: bool = False):
        """The routing (which orders the blocks) first, then the inputs (which read that order):
        local ones gathered once (:class:`WindowInputs`) or by the fused loop (:class:`TapInputs`)."""
        nets = self.nets
        routing = GateRouting(nets, self.y, self.X) if nets.moe else TagRouting(nets, self.y, schedule)
        local = TapInputs if fused else WindowInputs
        inputs = (local if nets.local else PixelInputs)(nets, self.X, schedule)
        return routing, inputs

    def fit(self, schedule: torch.Tensor, *, every: int = 0,
            callback: Callable[[int], None] | None = None, progress: str | None = None,
            plan_chunk: int = 2048, eager: bool = False, fused: bool | None = None) -> int:
        """Run ``schedule`` (T, M) of sample indices; ``callback(t)`` after every ``every`` steps.

        The steps run in chunks of at most ``plan_chunk`` (their inputs, labels, masks and slices
        looked up with a few batched operations), then the step loop (TorchScript unless
        ``eager``). On the CPU the steps run on one thread: each operation is tiny, and thread
        hand-offs would cost more than they save. ``progress`` names a ``tqdm.auto`` bar (None:
        silent). ``fused``: tag-routed steps on the CPU by the compiled step loop
        (:func:`fused_kernel`; 2-6x faster at the chapter's sizes, equal to float rounding); None = where it builds
        (unless ``eager``), False = never (eager torch), True = required. Returns the number of steps whose hidden-layer (or gate) gradients had to be
        clamped (also added to ``self.clipped_steps``).
        """
        if schedule.dim() != 2 or schedule.shape[1] != self.nets.M:
            raise ValueError(f"schedule must be (T, {self.nets.M}), got {tuple(schedule.shape)}")
        from tqdm.auto import tqdm
        schedule = schedule.to(self.device)
        T = schedule.shape[0]
        kernel = self._kernel(fused, eager, schedule)
        routing, inputs = self._routing_and_inputs(schedule, kernel is not None)
        bounds = _chunk_bounds(T, plan_chunk, every)
        clipped = 0
        with determinism.cpu_threads(1, self.device), torch.no_grad(), \
                tqdm(total=T, desc=progress, disable=progress is None, mininterval=1.0) as bar:
            for p0, p1 in zip(bounds[:-1], bounds[1:]):
                with torch.jit.optimized_execution(False):   # same arithmetic as eager
                    clipped += routing.steps(schedule[p0:p1].contiguous(), inputs, self.lr, self.clip, eager,
                                            kernel)
                bar.update(p1 - p0)
                if every and callback is not None and (p1 % every == 0 or p1 == T):
                    callback(p1)
        self.clipped_steps += clipped
        return clipped

    def _kernel(self, fused: bool | None, eager: bool, schedule: torch.Tensor | None = None):
        """The fused step loop :meth:`fit` uses (None: the torch one); ``fused`` as in :meth:`fit`.
        With ``fused=None`` and a ``schedule``, the compiled loop is used only where it measures
        faster than the torch loop on this machine for this network shape (:meth:`_compiled_wins`)."""
        if fused is False or (fused is None and eager):
            return None
        usable = self.device.type == "cpu" and not self.nets.moe and self.nets.Hb <= 1024
        kernel = fused_kernel() if usable else None
        if fused and kernel is None:
            raise RuntimeError("fused=True needs tag-routed networks on the CPU (Hb <= 1024), a C++ "
                               "compiler (g++ or $CXX) and MPNN_FUSED unset or not 0")
        if fused is None and kernel is not None and schedule is not None and not self._compiled_wins(kernel, schedule):
            return None
        return kernel

    def _compiled_wins(self, kernel, schedule: torch.Tensor) -> bool:
        """Time (up to) 64 steps of ``schedule`` with the compiled and the torch step loop, on copies
        of the networks, once per network shape on this machine (:func:`mpnn.infra.native.choose`)."""
        import copy
        nets = self.nets
        key = {"models": nets.M, "hidden": nets.Hb, "local": bool(nets.local), "pixels": int(self.X.shape[1]),
               "partitioned": int(nets.n_p) > 0}
        rows = schedule[:64].contiguous()

        def candidate(use):
            probe = copy.copy(self)
            probe.nets = copy.deepcopy(nets)

            def run():
                routing, inputs = probe._routing_and_inputs(rows, use is not None)
                with determinism.cpu_threads(1, self.device), torch.no_grad():
                    routing.steps(rows, inputs, probe.lr, probe.clip, True, use)
            return run
        # the copies are made only when the choice is measured, never on the calls that find it made
        return native.choose("tagnet.steps", key,
                             lambda: {"compiled": candidate(kernel), "torch": candidate(None)},
                             names=["compiled", "torch"]) == "compiled"

    def step(self, rows: torch.Tensor) -> None:
        """One per-sample SGD step for every network; ``rows`` (M,) are the samples' indices."""
        self.fit(torch.as_tensor(rows, device=self.device).view(1, self.nets.M))
