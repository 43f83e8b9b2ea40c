"""One fused Triton kernel for the sparse branch and the GAG / PLADIS rule (imported only when Triton is wanted).

One program takes BLOCK_N query rows of one (batch, head) against ALL keys of the block it guides (≤ 1024),
held in registers as KT key chunks of BLOCK_MC keys, # (KT, BLOCK_N, BLOCK_MC), so every product is a batched
dot that spreads the keys over the warps:
  z = q·kᵀ·scale (+ mask),  P_d = softmax(z) over the keys of the block
  E = α-entmax(z): Newton on f(τ) = Σ[(α−1)z − τ]_+^{1/(α−1)} − 1 from a lower bound (f convex, so τ rises
      monotonically), then the exact closed form on the found support for α = 1.5 and 2, then Σ E = 1.
  Δ = (E − P_d)·v in every mode, and
  MODE_CROSS:             O_s = E·v                        out = w_s·O_s + w_Δ·Δ
  MODE_CROSS_DENSE_GIVEN: O_s = O_d + Δ (O_d of the chain)  out = w_s·O_d + (w_s + w_Δ)·Δ
  MODE_JOINT:             text keys only, O_s^t = E·v_t, m = exp(lse_t − lse) the row's dense text mass,
                          out = O_d + m·(g − O_d^t) = O_d + m·((w_s − 1)·O_s^t + (1 + w_Δ)·Δ)
GAG is linear in (O_s, Δ) once three per-row dot products are known:
  a = ⟨Δ,O_s⟩/‖O_s‖²,  ‖G‖² = ‖Δ∥‖² + β²‖Δ⊥‖²,  c = min(1, τ/‖G‖),
  g = O_s + λc·G = w_s·O_s + w_Δ·Δ with w_s = 1 + λc(1−β)a, w_Δ = λcβ,
so pass A accumulates the dot products over head_dim chunks and pass B writes out (PLADIS needs pass B only:
w_s = 1, w_Δ = s − 1). The head_dim is walked in BLOCK_D chunks so only a (keys, BLOCK_D) slice
of k or v is staged at a time.
Register budget (gag_core/kernels/resources.py compiles every launch class for sm_80–90): the mask is the
logits' starting value (no mask tile beside them), E is normalised where it is formed, E and P_Δ = E − P_d are
converted to dot operands once, and pass B applies its per-row weights in float32 after the dots
(w_e·(E·v) + w_d·(P_Δ·v)), so at most the logits and two half-width operand tiles are live at once.
"""
from __future__ import annotations

import triton
import triton.language as tl

# Compile-time switches of the kernel (tl.constexpr so the kernel body can name them).
MODE_CROSS, MODE_CROSS_DENSE_GIVEN, MODE_JOINT = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
METHOD_GAG, METHOD_PLADIS = tl.constexpr(0), tl.constexpr(1)
ALPHA_GENERAL, ALPHA_15, ALPHA_2 = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
MASK_NONE, MASK_BOOL, MASK_ADD = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)


@triton.jit
def _row_sum(x):
    """Σ over key chunks and keys.  # (KT, BLOCK_N, BLOCK_MC) → (BLOCK_N,)"""
    return tl.sum(tl.sum(x, 2), 0)


@triton.jit
def _row_max(x):
    """max over key chunks and keys.  # (KT, BLOCK_N, BLOCK_MC) → (BLOCK_N,)"""
    return tl.max(tl.max(x, 2), 0)


@triton.jit
def _newton_terms(zs, tau, am1, r, ALPHA_KIND: tl.constexpr):
    """f(τ) = Σ(X − τ)_+^r − 1 and f′(τ) up to sign, X = (α−1)·zs, per row."""
    d = tl.maximum(zs * am1 - tau[None, :, None], 0.0)
    if ALPHA_KIND == ALPHA_15:
        f = _row_sum(d * d) - 1.0
        fp = 2.0 * _row_sum(d)
    elif ALPHA_KIND == ALPHA_2:
        f = _row_sum(d) - 1.0
        fp = _row_sum((d > 0).to(tl.float32))
    else:
        d_r1 = tl.where(d > 0, tl.exp2((r - 1.0) * tl.log2(tl.where(d > 0, d, 1.0))), 0.0)
        f = _row_sum(d_r1 * d) - 1.0
        fp = r * _row_sum(d_r1)
    return f, fp


@triton.jit
def _entmax_terms(zs, tau, am1, r, ALPHA_KIND: tl.constexpr):
    """(X − τ)_+^r, X = (α−1)·zs: α-entmax before its normalisation.  # (KT, BLOCK_N, BLOCK_MC)"""
    d = tl.maximum(zs * am1 - tau[None, :, None], 0.0)
    if ALPHA_KIND == ALPHA_15:
        out = d * d
    elif ALPHA_KIND == ALPHA_2:
        out = d
    else:
        out = tl.where(d > 0, tl.exp2(r * tl.log2(tl.where(d > 0, d, 1.0))), 0.0)
    return out


@triton.jit
def _load_v(v_base, sv_m, sv_d, d0, M, V_D: tl.constexpr, KT: tl.constexpr, BLOCK_MC: tl.constexpr,
            BLOCK_D: tl.constexpr, DOT_F32: tl.constexpr):
    """v[keys, d0:d0+BLOCK_D] as KT key chunks, zero past the last key or column.  # (KT, BLOCK_MC, BLOCK_D)"""
    keys = tl.arange(0, KT)[:, None, None] * BLOCK_MC + tl.arange(0, BLOCK_MC)[None, :, None]
    cols = (d0 + tl.arange(0, BLOCK_D))[None, None, :]
    vc = tl.load(v_base + keys * sv_m + cols * sv_d, mask=(keys < M) & (cols < V_D), other=0.0)
    if DOT_F32:
        vc = vc.to(tl.float32)
    return vc


@triton.jit
def _pv(p, vc, DOT_PRECISION: tl.constexpr):
    """Σ_keys p·v for one head_dim chunk.  # (KT, BLOCK_N, BLOCK_MC) × (KT, BLOCK_MC, BLOCK_D) → (BLOCK_N, BLOCK_D)"""
    return tl.sum(tl.dot(p.to(vc.dtype), vc, input_precision=DOT_PRECISION), 0)


@triton.jit
def _load_rows(base, rows, row_ok, s_n, s_d, d0, V_D: tl.constexpr, BLOCK_D: tl.constexpr):
    """base[rows, d0:d0+BLOCK_D] in float32.  # (BLOCK_N, BLOCK_D)"""
    cols = d0 + tl.arange(0, BLOCK_D)
    ok = row_ok[:, None] & (cols < V_D)[None, :]
    return tl.load(base + rows[:, None] * s_n + cols[None, :] * s_d, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def gag_fused_kernel(
    Q, K, V, OD, LSE, MASK, OUT, ST,
    sq_b, sq_h, sq_n, sq_d,
    sk_b, sk_h, sk_m, sk_d,
    sv_b, sv_h, sv_m, sv_d,
    sod_b, sod_h, sod_n, sod_d,
    sl_b, sl_h, sl_n,
    smk_b, smk_h, smk_n, smk_m,
    so_b, so_h, so_n, so_d, st_c,
    H, M, SEG0_START, SEG0_END, SEG1_START, SEG1_END, N_ROWS, NB0,
    sm_scale, guidance, beta, tau_cap, alpha,
    BLOCK_N: tl.constexpr, KT: tl.constexpr, BLOCK_MC: tl.constexpr, QK_D: tl.constexpr, V_D: tl.constexpr,
    BLOCK_D: tl.constexpr, MODE: tl.constexpr, METHOD: tl.constexpr, ALPHA_KIND: tl.constexpr,
    MASK_KIND: tl.constexpr, CAP: tl.constexpr, MAX_ITER: tl.constexpr, TOL: tl.constexpr,
    DOT_F32: tl.constexpr, DOT_PRECISION: tl.constexpr, STATS: tl.constexpr,
):
    """out rows = rule(O_s, O_d) for BLOCK_N query rows of one (batch, head); see the module docstring."""
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    # Rows come in two segments: [SEG0_START, SEG0_END) then [SEG1_START, SEG1_END) (joint: the image rows
    # on either side of the text); N_ROWS is q's length (the stats buffer's row count).
    in_first = pid < NB0
    row0 = tl.where(in_first, SEG0_START + pid * BLOCK_N, SEG1_START + (pid - NB0) * BLOCK_N)
    row_end = tl.where(in_first, SEG0_END, SEG1_END)
    rows = row0 + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    row_ok = rows < row_end
    keys = tl.arange(0, KT)[:, None, None] * BLOCK_MC + tl.arange(0, BLOCK_MC)[None, None, :]  # (KT, 1, BLOCK_MC)
    key_ok = keys < M
    dd = tl.arange(0, BLOCK_D)

    q_base = Q + b * sq_b + h * sq_h
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    od_base = OD + b * sod_b + h * sod_h
    o_base = OUT + b * so_b + h * so_h

    # ---- logits z = q·kᵀ/√d (+ mask) over head_dim chunks  # (KT, BLOCK_N, BLOCK_MC)
    # The mask is the dot's starting value (in units of 1/scale), so no mask tile is live beside z:
    # bool → 0 or −inf; additive → mask/scale, −inf kept, finite values kept finite.
    if MASK_KIND == MASK_NONE:
        z = tl.zeros((KT, BLOCK_N, BLOCK_MC), dtype=tl.float32)
    else:
        mk = tl.load(MASK + b * smk_b + h * smk_h + rows[None, :, None] * smk_n + keys * smk_m,
                     mask=row_ok[None, :, None] & key_ok, other=0)
        if MASK_KIND == MASK_BOOL:
            z = tl.where(mk != 0, 0.0, float("-inf"))
        else:
            mkf = mk.to(tl.float32)
            z = tl.where(mkf > float("-inf"), tl.maximum(mkf / sm_scale, -3.0e38), mkf)
    for d0 in range(0, QK_D, BLOCK_D):
        d_ok = (d0 + dd) < QK_D
        qc = tl.load(q_base + rows[:, None] * sq_n + (d0 + dd)[None, :] * sq_d, mask=row_ok[:, None] & d_ok[None, :],
                     other=0.0)
        qc = tl.broadcast_to(qc[None, :, :], (KT, BLOCK_N, BLOCK_D))
        kt = tl.load(k_base + keys * sk_m + (d0 + dd)[None, :, None] * sk_d, mask=key_ok & d_ok[None, :, None],
                     other=0.0)
        if DOT_F32:
            qc = qc.to(tl.float32)
            kt = kt.to(tl.float32)
        z = tl.dot(qc, kt, z, input_precision=DOT_PRECISION)  # kt = k[keys, d0:d0+BLOCK_D]ᵀ per chunk
    z = z * sm_scale
    z = tl.where(key_ok, z, float("-inf"))
    row_max = _row_max(z)
    has_key = row_max > float("-inf")  # False on fully masked rows: they get E = P_d = 0
    row_max = tl.where(has_key, row_max, 0.0)
    # Only this tile stays live until E is known: max 0 on live rows, −inf on masked keys.
    zs = z - row_max[None, :, None]

    # ---- dense statistics per row: P_d = exp(zs)/l over the keys of the block (text keys in MODE_JOINT)
    l_sum = _row_sum(tl.exp(zs))
    inv_l = 1.0 / tl.where(l_sum > 0, l_sum, 1.0)
    if MODE == MODE_JOINT:
        lse = tl.load(LSE + b * sl_b + h * sl_h + rows * sl_n, mask=row_ok, other=0.0).to(tl.float32)
        live_row = (l_sum > 0) & (lse > float("-inf"))
        # m = exp(lse_t − lse), lse_t = row_max + log l (0 where the row or its text block is fully masked)
        mass = tl.where(live_row, tl.exp(row_max + tl.log(tl.where(live_row, l_sum, 1.0)) - lse), 0.0)
        mass = tl.minimum(mass, 1.0)

    # ---- α-entmax threshold τ on X = (α−1)·zs: Newton on f(τ) = Σ(X − τ)_+^r − 1, r = 1/(α−1)
    am1 = alpha - 1.0
    r = 1.0 / am1
    live = zs > float("-inf")
    n_safe = tl.maximum(_row_sum(live.to(tl.float32)), 1.0)
    x_mean = am1 * _row_sum(tl.where(live, zs, 0.0)) / n_safe
    # τ* ≥ max X − 1 = −1 (p_max ≤ 1) and τ* ≥ mean X − n^{1−α} (power means): f ≥ 0 at the start, f is
    # convex and decreasing, so Newton rises monotonically towards τ*.
    tau = tl.maximum(x_mean - tl.exp2(-am1 * tl.log2(n_safe)), -1.0)
    err = tl.max(tau, 0) * 0.0 + 2.0 * TOL  # enter the loop
    it = 0
    while (err > TOL) & (it < MAX_ITER):
        f, fp = _newton_terms(zs, tau, am1, r, ALPHA_KIND)
        f = tl.where(has_key, f, 0.0)
        tau = tau + f / tl.where(fp > 0, fp, 1.0)
        err = tl.max(tl.abs(f), 0)
        it += 1
    # Exact finish on the support S = {X > τ}: Σ_S (X − τ)² = 1 (α = 1.5) or Σ_S (X − τ) = 1 (α = 2).
    if ALPHA_KIND != ALPHA_GENERAL:
        supp = zs * am1 > tau[None, :, None]
        k_s = _row_sum(supp.to(tl.float32))
        k_safe = tl.maximum(k_s, 1.0)
        mean_s = am1 * _row_sum(tl.where(supp, zs, 0.0)) / k_safe
        if ALPHA_KIND == ALPHA_15:
            xc = tl.where(supp, zs * am1 - mean_s[None, :, None], 0.0)
            tau_x = mean_s - tl.sqrt(tl.maximum((1.0 - _row_sum(xc * xc)) / k_safe, 0.0))
        else:
            tau_x = mean_s - 1.0 / k_safe
        tau = tl.where(k_s > 0, tau_x, tau)
    # E = (X − τ)_+^r / Σ: the sum first, then E where it is used, so no unnormalised tile stays live beside zs
    e_sum = _row_sum(_entmax_terms(zs, tau, am1, r, ALPHA_KIND))
    inv_e = 1.0 / tl.where(e_sum > 0, e_sum, 1.0)

    # ---- the probability rows as dot operands, converted once (v's dtype, or float32): E and
    # P_Δ = E − P_d, whose products with v give O_s = E·v and Δ = P_Δ·v. zs and the float32 tiles die here.
    if DOT_F32:
        p_dt = tl.float32
    else:
        p_dt = V.dtype.element_ty
    ent = _entmax_terms(zs, tau, am1, r, ALPHA_KIND) * inv_e[None, :, None]  # E
    p_delta = (ent - tl.exp(zs) * inv_l[None, :, None]).to(p_dt)
    p_e = p_delta  # E as a dot operand where pass A or B reads it (below); else unused
    if METHOD == METHOD_GAG:
        if MODE != MODE_CROSS_DENSE_GIVEN:
            p_e = ent.to(p_dt)
    elif MODE == MODE_CROSS:  # PLADIS cross: out = O_s + (s − 1)·Δ = (E + (s − 1)·P_Δ)·v, one tile
        p_delta = (ent + (guidance - 1.0) * (ent - tl.exp(zs) * inv_l[None, :, None])).to(p_dt)

    if METHOD == METHOD_GAG:
        # ---- pass A: ‖O_s‖², ⟨Δ, O_s⟩, ‖Δ‖² over head_dim chunks
        ss = tl.zeros((BLOCK_N,), dtype=tl.float32)
        ds = tl.zeros((BLOCK_N,), dtype=tl.float32)
        dd2 = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for d0 in range(0, V_D, BLOCK_D):
            vc = _load_v(v_base, sv_m, sv_d, d0, M, V_D, KT, BLOCK_MC, BLOCK_D, DOT_F32)
            delta = _pv(p_delta, vc, DOT_PRECISION)
            if MODE == MODE_CROSS_DENSE_GIVEN:
                o_s = _load_rows(od_base, rows, row_ok, sod_n, sod_d, d0, V_D, BLOCK_D) + delta
            else:
                o_s = _pv(p_e, vc, DOT_PRECISION)
            ss += tl.sum(o_s * o_s, 1)
            ds += tl.sum(delta * o_s, 1)
            dd2 += tl.sum(delta * delta, 1)
        coef = tl.where(ss > 0, ds / tl.where(ss > 0, ss, 1.0), 0.0)  # Δ∥ = coef·O_s
        par2 = coef * ds  # ‖Δ∥‖²
        g2 = par2 + beta * beta * tl.maximum(dd2 - par2, 0.0)  # ‖G‖² = ‖Δ∥‖² + β²‖Δ⊥‖²
        if CAP:
            g_norm = tl.sqrt(g2)
            c = tl.where(g_norm > tau_cap, tau_cap / tl.where(g_norm > tau_cap, g_norm, 1.0), 1.0)
        else:
            c = tl.full((BLOCK_N,), 1.0, dtype=tl.float32)
        lc = guidance * c
        w_s = 1.0 + lc * (1.0 - beta) * coef  # out = w_s·O_s + w_delta·Δ
        w_delta = lc * beta
        if STATS:  # per row: ‖O_s‖, ‖λcG‖, capped, ‖Δ∥‖², ‖Δ⊥‖² into ST (5, B, H, N_ROWS)
            st = ST + (b * H + h) * N_ROWS + rows
            g_len = tl.sqrt(g2)
            tl.store(st, tl.sqrt(ss), mask=row_ok)
            tl.store(st + st_c, tl.abs(lc) * g_len, mask=row_ok)
            if CAP:
                tl.store(st + 2 * st_c, (g_len > tau_cap).to(tl.float32), mask=row_ok)
            tl.store(st + 3 * st_c, par2, mask=row_ok)
            tl.store(st + 4 * st_c, tl.maximum(dd2 - par2, 0.0), mask=row_ok)
    else:
        # PLADIS: g = O_d + s·Δ = O_s + (s − 1)·Δ
        w_s = tl.full((BLOCK_N,), 1.0, dtype=tl.float32)
        w_delta = tl.full((BLOCK_N,), 0.0, dtype=tl.float32) + (guidance - 1.0)

    # ---- pass B: out = w_e·(E·v) + w_d·(P_Δ·v) + od_w·O_d, weights per row in float32, chunk by chunk
    if MODE == MODE_CROSS:
        w_e = w_s  # w_s·O_s + w_Δ·Δ (PLADIS: P_Δ already holds E + (s − 1)·P_Δ, weight 1)
        if METHOD == METHOD_GAG:
            w_d = w_delta
        else:
            w_d = w_s
        od_w = w_s  # unused
    if MODE == MODE_CROSS_DENSE_GIVEN:
        w_e = w_s  # unused
        w_d = w_s + w_delta  # w_s·O_d + (w_s + w_Δ)·Δ
        od_w = w_s
    if MODE == MODE_JOINT:
        w_e = mass * (w_s - 1.0)  # O_d + m·((w_s − 1)·O_s^t + (1 + w_Δ)·Δ)
        w_d = mass * (1.0 + w_delta)
        od_w = tl.full((BLOCK_N,), 1.0, dtype=tl.float32)
    for d0 in range(0, V_D, BLOCK_D):
        vc = _load_v(v_base, sv_m, sv_d, d0, M, V_D, KT, BLOCK_MC, BLOCK_D, DOT_F32)
        acc = w_d[:, None] * _pv(p_delta, vc, DOT_PRECISION)  # (BLOCK_N, BLOCK_D)
        if METHOD == METHOD_GAG and MODE != MODE_CROSS_DENSE_GIVEN:
            acc += w_e[:, None] * _pv(p_e, vc, DOT_PRECISION)
        if MODE != MODE_CROSS:
            acc += od_w[:, None] * _load_rows(od_base, rows, row_ok, sod_n, sod_d, d0, V_D, BLOCK_D)
        tl.store(o_base + rows[:, None] * so_n + (d0 + dd)[None, :] * so_d, acc.to(OUT.dtype.element_ty),
                 mask=row_ok[:, None] & ((d0 + dd) < V_D)[None, :])
