"""Device-resident training for the "cuda" backend: whole epochs on the GPU.

(One module on purpose, above the ~700 lines the project aims for: the device functions
of one epoch kernel, its plan and its two executors share the kernel's constants and
structures, compiled together.)

The layer-by-layer path launches some 30-40 kernels per training step through the ops
layer, each costing tens of microseconds of Numba launch overhead, and reads the loss back
every step: at MNIST sizes it is bound by launches, not by the GPU. This module runs the
step of :mod:`nnkern.engine` (Linear layers, each followed by an elementwise activation or
none, cross entropy on integer labels, any nnkern optimizer) with everything on the device:

* the whole training set (x and its labels) is copied to the device once per ``fit``;
* parameters, gradients and the optimizer's state live in flat device buffers, each layer
  as ``[W (fan_in x fan_out) | b (fan_out)]`` at an offset (so ``[dW; db]`` is one
  (fan_in + 1) x fan_out matrix, written by one GEMM), copied from and back into the
  model's own device arrays at the start and end of every epoch;
* each epoch's sample order is the DataLoader's own permutation (the same seed gives the
  same batches as the CPU paths), made on the host and copied to the device once per epoch
  (240 KB for MNIST): drawing it on the device would save that copy but not reproduce the
  host generator's order, and the copy costs less than one training step. Batches are
  never gathered into a buffer: the GEMMs that read x index its rows through the order;
* with sample weights, each row's share of its step's weighted mean loss (its weight over
  its batch's total, computed on the host with the order by ``run_epoch`` of
  :mod:`nnkern.engine`, whose batches of zero weight take no step) is copied with the order,
  one float per sample, and scales the row's dlogits and loss in place of 1 / rows;
* a step is ``2 L + 2`` phases for L layers: per layer a forward GEMM with the bias and
  activation fused into its epilogue; the fused softmax-cross-entropy (dlogits, the row
  losses and whether each row was classified right); per layer one backward phase holding
  both GEMMs, the augmented ``[x; 1]^T @ delta`` giving dW and db together and
  ``(delta @ W^T) * act'`` giving the layer below its delta; and one phase updating every
  parameter (flat, by the optimizer's rule, weight decay fused: the biases' own where it
  differs from the weights', as for scikit-learn's L2 penalty on the weights alone);
* the step's mean loss and number of right predictions are summed on the device into
  per-step arrays, read back once per epoch.

Two executors run the same phases (the same device functions, so the same numbers):

* ``"persistent"``: ONE cooperative kernel launch per epoch (per STEPS_PER_LAUNCH steps
  of it). Its blocks loop over the steps and phases, each phase's work items (GEMM tiles, loss rows, update chunks) spread
  over the blocks, and meet at a grid-wide barrier (``cuda.cg.this_grid().sync()``)
  between phases: no launch, and no host round trip, inside an epoch;
* ``"launches"``: one kernel launch per phase, ``2 L + 2`` per step (12 for the
  784-256-128-64-20-10 network, 6 for 784-100-10), for devices or drivers where the
  cooperative launch fails (then it is used automatically, with a warning).

``NNKERN_CUDA_EXECUTOR`` ("persistent", "launches" or "auto", the default) chooses.

GEMM work items: a block of 16 x 16 threads computes an output tile of 64, 32 or 16 square
(each thread a 4x4, 2x2 or 1x1 register tile), K in steps of 16 through shared memory, chosen per
GEMM from its shape so that a phase has work for about as many blocks as the grid holds;
when even 16-square tiles are too few (the first layer's forward: a 64 x 256 output over
K = 784), K is split too, and the last block to finish a tile (an atomic counter) sums the
partial tiles in split order and applies the epilogue: deterministic, no float atomics.
The same seed therefore gives the same numbers run after run on one GPU; the split depends
on the GPU's multiprocessor count, so another GPU agrees to round-off.

Numbers: the GEMMs, the loss and the updates use the ops layer's arithmetic (the update
rules and activations are the same device functions, cuda_kernels'), so results equal the
layer-by-layer "cuda" path to round-off (the summation order of the products differs).
A loss that is not finite stops the epoch after that step's update, as the layer path's
``fit`` does when it raises: the error then names the same step.
"""

from __future__ import annotations

import math
import os
import warnings
from functools import cache
from types import SimpleNamespace

import numba
import numpy as np
from numba import cuda, types

from . import ACTIVATION_CODES, UPDATE_RULE_CODES
from .cuda_kernels import GEMM_SIDE, ROW_THREADS, TILE_K, _block_sum, kernel_family

__all__ = ["FusedCudaTrainer", "plan_gemm", "data_fits", "compile_targets", "EXECUTORS", "RULES"]

EXECUTORS = ("persistent", "launches")

BLOCK_SIDE = GEMM_SIDE
"""A block is BLOCK_SIDE x BLOCK_SIDE threads (256, as the backend's GEMM)."""
SIMULATOR_BLOCK_SIDE = 8
"""Under the simulator blocks are 8 x 8 threads: the same code, a quarter of the Python
threads (the simulator's cost grows faster than its thread count)."""
TILE_MULTIPLES = (4, 2, 1)
"""Output tiles of the GEMM work items are BLOCK_SIDE times these a side (64, 32, 16): each
thread a square register tile of that many rows and columns."""
UPDATE_PER_THREAD = 4
"""Parameters per thread of an update work item."""
MIN_SPLIT_K = 64
"""A split of a GEMM's K is at least this long (four K steps)."""
BLOCKS_PER_SM = 2
"""Blocks per multiprocessor that a phase's work is sized for (and the persistent grid)."""
SIMULATOR_PARALLELISM = 4
"""The parallelism the plan assumes under the simulator (which runs one block at a time):
small, so that small test shapes still get split and differently tiled GEMMs."""
STEPS_PER_LAUNCH = 512
"""The persistent executor launches once per this many steps (MNIST at batch 64: twice per
epoch), so that no launch runs long enough for a display GPU's watchdog to end it."""
MAX_REGISTERS = 128
"""Registers per thread the training kernels are capped at (``NNKERN_CUDA_MAX_REGISTERS``
overrides; 0: no cap). Uncapped, ptxas gives them 224 (float32, sm_90): one block of 256
threads per multiprocessor. At 128 (~500 bytes of spills, loop invariants, to the L1) two
fit, the BLOCKS_PER_SM that phases are sized for."""
DEVICE_MEMORY_SHARE = 0.5
"""The training set goes to the device only if it takes at most this share of the free
device memory (else fit streams batches through the layer-by-layer path)."""

# Phase kinds, and the columns of the phase table.
FORWARD, LOSS, BACKWARD, UPDATE = range(4)
KIND, LAYER, SIDE1, SPLITS1, SIDE2, SPLITS2, WORKSPACE2, COUNTERS2 = range(8)
# Columns of the layer table: sizes, activation, offsets into the flat buffers
# (P_OFF: W in params/grads/states, b right after it; the others in acts).
FAN_IN, FAN_OUT, ACT, KEEP_PREACT, P_OFF, H_OFF, Z_OFF, D_OFF = range(8)
LAYER_COLUMNS = 8
# Entries of the hyperparameter array (in the parameters' dtype, converted from the
# optimizer's float64 values as cuda_backend converts them); the biases have their own
# weight decay (0 where the optimizer decays the weights alone, as scikit-learn's L2).
A, ONE_MINUS_A, B, ONE_MINUS_B, EPS, NEG_WEIGHT_DECAY, NEG_BIAS_WEIGHT_DECAY = range(7)
HYPER_SIZE = 7
# Columns of the per-step coefficients: the batch's rows (the loss's divisor), the learning
# rate (a schedule may change it every step), Adam's bias corrections 1 - beta**t and
# AdamW's decay 1 - lr * weight_decay (of the weights, and of the biases).
ROWS, LR, BIAS_CORRECTION1, BIAS_CORRECTION2, DECAY, BIAS_DECAY = range(6)
STEP_COLUMNS = 6
# status[HALTED_AT]: the first step whose loss was not finite (n_steps while none was).
HALTED_AT = 0
# The update rules' codes, as nnkern.backends.UPDATE_RULE_CODES defines them.
RULE_SGD, RULE_MOMENTUM, RULE_ADAGRAD, RULE_RMSPROP, RULE_ADADELTA, RULE_ADAM, RULE_ADAMW, RULE_NESTEROV = (
    UPDATE_RULE_CODES[name]
    for name in ("sgd", "momentum", "adagrad", "rmsprop", "adadelta", "adam", "adamw", "nesterov"))
RULES = frozenset(UPDATE_RULE_CODES.values())  # every rule runs on the device
# What a GEMM's epilogue does after storing (acc + bias).
POST_NONE, POST_ACTIVATE, POST_GRAD_MASK = range(3)

_IDENTITY = ACTIVATION_CODES["identity"]


def _phase_items(layers, phases, phase, rows, n_params, threads):
    """How many work items ``phase`` has for a batch of ``rows``, in blocks of ``threads``
    (host and device): GEMM tiles (times K splits), LOSS rows per a group of ROW_THREADS,
    chunks of UPDATE_PER_THREAD parameters per thread."""
    kind = phases[phase, KIND]
    layer = phases[phase, LAYER]
    if kind == FORWARD:
        side = phases[phase, SIDE1]
        return ((rows + side - 1) // side) * ((layers[layer, FAN_OUT] + side - 1) // side) * phases[phase, SPLITS1]
    if kind == LOSS:
        rows_per_item = threads // ROW_THREADS
        return (rows + rows_per_item - 1) // rows_per_item
    if kind == BACKWARD:
        side = phases[phase, SIDE1]
        items = (((layers[layer, FAN_IN] + side) // side) * ((layers[layer, FAN_OUT] + side - 1) // side)
                 * phases[phase, SPLITS1])
        if layer > 0:
            side = phases[phase, SIDE2]
            items += ((rows + side - 1) // side) * ((layers[layer, FAN_IN] + side - 1) // side) * phases[phase, SPLITS2]
        if layer == layers.shape[0] - 1:
            items += 1  # the step's loss and right predictions, summed by one block
        return items
    chunk = UPDATE_PER_THREAD * threads
    return (n_params + chunk - 1) // chunk


_phase_items_device = cuda.jit(device=True)(_phase_items)


def plan_gemm(m: int, n: int, k: int, parallelism: int, block_side: int = BLOCK_SIDE) -> tuple[int, int]:
    """(tile side, K splits) for an m x n x k GEMM phase meant to keep ``parallelism``
    blocks busy: the largest tile that gives at least half as many tiles as blocks; failing
    that the smallest tiles, with K split into as many pieces (each at least MIN_SPLIT_K
    long) as make up the difference."""
    for multiple in TILE_MULTIPLES:
        side = multiple * block_side
        tiles = -(-m // side) * -(-n // side)
        if 2 * tiles >= parallelism:
            return side, 1
    splits = max(1, min(parallelism // tiles, k // MIN_SPLIT_K))
    return side, splits


# ---------------------------------------------------------------------------------------
# Reductions within groups of ROW_THREADS threads of a block (one group per loss row); the
# tree is that of cuda_kernels' block reductions over a ROW_THREADS-thread block, so a row's
# max and sum are the layer path's, bit for bit. Every thread of the block calls them.
# ---------------------------------------------------------------------------------------


@cuda.jit(device=True)
def _group_max(buf, value):
    tid = cuda.threadIdx.x
    lane = tid % ROW_THREADS
    buf[tid] = value
    cuda.syncthreads()
    stride = ROW_THREADS // 2
    while stride > 0:
        if lane < stride:
            buf[tid] = max(buf[tid], buf[tid + stride])
        cuda.syncthreads()
        stride //= 2
    result = buf[tid - lane]
    cuda.syncthreads()
    return result


@cuda.jit(device=True)
def _group_sum(buf, value):
    tid = cuda.threadIdx.x
    lane = tid % ROW_THREADS
    buf[tid] = value
    cuda.syncthreads()
    stride = ROW_THREADS // 2
    while stride > 0:
        if lane < stride:
            buf[tid] += buf[tid + stride]
        cuda.syncthreads()
        stride //= 2
    result = buf[tid - lane]
    cuda.syncthreads()
    return result


@cache
def kernels(dtype, block_side: int = BLOCK_SIDE, max_registers: int = 0) -> SimpleNamespace:
    """The two training kernels for one float dtype and blocks of block_side^2 threads,
    built and cached on first use: ``train_epoch`` (the persistent executor) and
    ``train_phase`` (one phase of one step), and ``signatures``: name -> (Python function,
    argument types) as they are launched. ``max_registers``: the per-thread register cap
    they are built with on a GPU (0: none)."""
    threads = block_side * block_side
    rows_per_item = threads // ROW_THREADS  # loss rows per work item
    update_chunk = UPDATE_PER_THREAD * threads
    tile_padded = TILE_MULTIPLES[0] * block_side + 1  # one spare column (see cuda_kernels)
    dtype = np.dtype(dtype)
    real = numba.from_dtype(dtype)
    f = dtype.type
    ZERO, ONE = f(0), f(1)
    NEG_INF = f(-np.inf)
    device = kernel_family(dtype).device
    activate, local_grad = device.activate, device.local_grad

    def make_gemm_item(per_thread):
        """The work item of one output tile (or one K split of it) of side
        block_side * per_thread: dst = op(a) @ op(b) (+ bias), then the post-op."""
        side = block_side * per_thread
        loads = side * TILE_K // threads  # elements of each shared tile per thread and K step
        tile_size = side * side

        @cuda.jit(device=True)
        def store(m, n, value, N, dst, dst_off, bias, bias_off):
            if bias_off >= 0:
                value += bias[bias_off + n]
            dst[dst_off + m * N + n] = value

        @cuda.jit(device=True)
        def post_op(m0, n0, M, N, dst, dst_off, post, code, slope, acts, post_off):
            """The activation (into acts at post_off) or the activation-gradient mask (by
            acts at post_off) of what this thread stored: a separate pass, so that the
            large inlined activation is not in the register tile's unrolled loops."""
            tid = cuda.threadIdx.x
            tx = tid % block_side
            ty = tid // block_side
            for i in range(per_thread):
                m = m0 + ty + block_side * i
                for j in range(per_thread):
                    n = n0 + tx + block_side * j
                    if m < M and n < N:
                        idx = m * N + n
                        if post == POST_ACTIVATE:
                            acts[post_off + idx] = activate(code, dst[dst_off + idx], slope)
                        else:
                            dst[dst_off + idx] = dst[dst_off + idx] * local_grad(code, acts[post_off + idx], slope)

        @cuda.jit(device=True)
        def gemm_item(item, splits, M, N, K,
                      a, a_off, a_ld, a_trans, gather, order, base, ones_row,
                      b, b_off, b_ld, b_trans,
                      dst, dst_off, bias, bias_off, post, code, slope, acts, post_off,
                      ws, ws_off, counters, counter_off, a_tile, b_tile, flag):
            """op(a) is M x K: a stored (M, K) at a_off with row stride a_ld, or (K, M)
            when a_trans; with gather its stored rows are order[base + row]; with ones_row
            its last row (M - 1) is ones. op(b) is K x N likewise (stored (N, K) when
            b_trans). Out-of-range rows, columns and k read as zero."""
            tid = cuda.threadIdx.x
            tx = tid % block_side
            ty = tid // block_side
            tiles_n = (N + side - 1) // side
            tile = item // splits
            split = item % splits
            m0 = (tile // tiles_n) * side
            n0 = (tile % tiles_n) * side
            chunk = ((K + splits - 1) // splits + TILE_K - 1) // TILE_K * TILE_K
            k_lo = split * chunk
            k_hi = min(K, k_lo + chunk)
            b_frag = cuda.local.array(per_thread, real)
            acc = cuda.local.array((per_thread, per_thread), real)
            for i in range(per_thread):
                for j in range(per_thread):
                    acc[i, j] = ZERO
            for k0 in range(k_lo, k_hi, TILE_K):
                # Consecutive threads read consecutive addresses of the stored layout.
                for r in range(loads):
                    idx = tid + r * threads
                    if a_trans:
                        kk = idx // side
                        mm = idx % side
                    else:
                        kk = idx % TILE_K
                        mm = idx // TILE_K
                    gk = k0 + kk
                    gm = m0 + mm
                    value = ZERO
                    if gk < k_hi and gm < M:
                        if ones_row and gm == M - 1:
                            value = ONE
                        else:
                            row = gk if a_trans else gm
                            if gather:
                                row = order[base + row]
                            value = a[a_off + row * a_ld + (gm if a_trans else gk)]
                    a_tile[kk, mm] = value
                    if b_trans:
                        kk = idx % TILE_K
                        nn = idx // TILE_K
                    else:
                        kk = idx // side
                        nn = idx % side
                    gk = k0 + kk
                    gn = n0 + nn
                    value = ZERO
                    if gk < k_hi and gn < N:
                        value = b[b_off + gn * b_ld + gk] if b_trans else b[b_off + gk * b_ld + gn]
                    b_tile[kk, nn] = value
                cuda.syncthreads()
                for kk in range(TILE_K):
                    for j in range(per_thread):
                        b_frag[j] = b_tile[kk, tx + block_side * j]
                    for i in range(per_thread):
                        a_value = a_tile[kk, ty + block_side * i]
                        for j in range(per_thread):
                            acc[i, j] += a_value * b_frag[j]
                cuda.syncthreads()
            finish = splits == 1
            if finish:
                for i in range(per_thread):
                    m = m0 + ty + block_side * i
                    for j in range(per_thread):
                        n = n0 + tx + block_side * j
                        if m < M and n < N:
                            store(m, n, acc[i, j], N, dst, dst_off, bias, bias_off)
            else:
                # Split K: park the partial tile, count it in; the last split of the tile
                # to arrive sums all of them in split order and finishes the tile.
                slot = ws_off + tile * splits * tile_size
                for i in range(per_thread):
                    for j in range(per_thread):
                        ws[slot + split * tile_size + (ty + block_side * i) * side + tx + block_side * j] = acc[i, j]
                cuda.threadfence()
                cuda.syncthreads()
                if tid == 0:
                    flag[0] = cuda.atomic.add(counters, counter_off + tile, 1)
                cuda.syncthreads()
                finish = flag[0] == splits - 1
                cuda.syncthreads()
                if finish:
                    cuda.threadfence()
                    for i in range(per_thread):
                        m = m0 + ty + block_side * i
                        for j in range(per_thread):
                            n = n0 + tx + block_side * j
                            if m < M and n < N:
                                at = slot + (ty + block_side * i) * side + tx + block_side * j
                                total = ZERO
                                for s in range(splits):
                                    total += ws[at + s * tile_size]
                                store(m, n, total, N, dst, dst_off, bias, bias_off)
                    if tid == 0:
                        counters[counter_off + tile] = 0  # ready for the next phase that splits
            if finish and post != POST_NONE:
                post_op(m0, n0, M, N, dst, dst_off, post, code, slope, acts, post_off)

        return gemm_item

    gemm_large, gemm_medium, gemm_small = (make_gemm_item(multiple) for multiple in TILE_MULTIPLES)
    large_side, medium_side = TILE_MULTIPLES[0] * block_side, TILE_MULTIPLES[1] * block_side

    @cuda.jit(device=True)
    def loss_item(item, rows, base, y, order, shares, weighted, acts, layers, slopes, step_coeffs, step, row_loss,
                  row_correct, buf):
        """Softmax cross entropy of rows_per_item rows of logits, a group of ROW_THREADS
        threads per row: dlogits = (softmax - onehot) / rows (times the last layer's
        activation gradient, if it has one) into the last layer's delta; the row's loss
        (float64) and whether its first largest logit is its label. ``weighted``: the
        row's share of the step's weighted mean loss (shares[base + row]) scales its
        dlogits instead of 1 / rows, and its loss too (the step's loss is then their sum)."""
        last = layers.shape[0] - 1
        classes = layers[last, FAN_OUT]
        logits_off = layers[last, H_OFF]
        tid = cuda.threadIdx.x
        lane = tid % ROW_THREADS
        row = item * rows_per_item + tid // ROW_THREADS
        valid = row < rows
        at = logits_off + row * classes
        local_max = NEG_INF
        if valid:
            for j in range(lane, classes, ROW_THREADS):
                local_max = max(local_max, acts[at + j])
        row_max = _group_max(buf, local_max)
        local_sum = ZERO
        if valid:
            for j in range(lane, classes, ROW_THREADS):
                local_sum += math.exp(acts[at + j] - row_max)
        total = _group_sum(buf, local_sum)
        if not valid:
            return
        log_sum = math.log(total)
        label = y[order[base + row]]
        n_rows = step_coeffs[step, ROWS]
        share = shares[base + row] if weighted else ONE
        code = layers[last, ACT]
        grad_src = (layers[last, Z_OFF] if layers[last, KEEP_PREACT] != 0 else logits_off) + row * classes
        d_at = layers[last, D_OFF] + row * classes
        for j in range(lane, classes, ROW_THREADS):
            p = math.exp(acts[at + j] - row_max - log_sum)
            if j == label:
                p -= ONE
            d = p * share if weighted else p / n_rows
            if code != _IDENTITY:
                d = d * local_grad(code, acts[grad_src + j], slopes[last])
            acts[d_at + j] = d
        if lane == 0:
            log_p = acts[at + label] - row_max - log_sum
            if weighted:
                log_p = log_p * share  # in the parameters' dtype: no float64 multiply in float32 kernels
            row_loss[row] = -float(log_p)
            best = 0
            best_value = acts[at]
            for j in range(1, classes):  # np.argmax: the first largest, a NaN counting as largest
                value = acts[at + j]
                if best_value == best_value and (value > best_value or value != value):
                    best = j
                    best_value = value
            row_correct[row] = 1 if best == label else 0

    @cuda.jit(device=True)
    def loss_sum_item(rows, step, weighted, row_loss, row_correct, step_loss, step_correct, status,
                      stop_on_nonfinite, buf):
        """The step's mean loss and right predictions, by one block: the layer path's
        sum_reduce order, then / rows in float64 (weighted: the rows' losses are their
        shares of the step's loss already)."""
        loss = 0.0
        right = 0.0
        for i in range(cuda.threadIdx.x, rows, threads):
            loss += row_loss[i]
            right += row_correct[i]
        loss = _block_sum(buf, loss)
        right = _block_sum(buf, right)
        if cuda.threadIdx.x == 0:
            mean = loss if weighted else loss / rows
            step_loss[step] = mean
            step_correct[step] = int(right)
            if stop_on_nonfinite and (math.isnan(mean) or math.isinf(mean)) and status[HALTED_AT] > step:
                status[HALTED_AT] = step

    @cuda.jit(device=True)
    def gemm_job(kind, phase, layer, item, rows, layers, phases, slopes):
        """What GEMM work item ``item`` of a FORWARD or BACKWARD phase is: (tile side, the
        item within that GEMM, splits, M, N, K, op(a) reads x (else acts), a_off, a_ld,
        a_trans, gather, ones_row, op(b) reads params (else acts), b_off, b_ld, b_trans,
        dst is grads (else acts), dst_off, bias_off, post, code, slope, post_off, ws_off,
        counter_off), tile side 0 for the last layer's extra item (the loss sum).

        FORWARD: h = act(in @ W + b) (z = in @ W + b kept where the gradient needs it);
        the first layer reads the batch's rows of x through the epoch's order.
        BACKWARD: first the tiles of [dW; db] = [in; 1]^T @ delta, then those of the delta
        below, (delta @ W^T) * act'(its z or h)."""
        fan_in = layers[layer, FAN_IN]
        fan_out = layers[layer, FAN_OUT]
        p_off = layers[layer, P_OFF]
        first = layer == 0
        in_off = 0 if first else layers[layer - 1, H_OFF]
        side = phases[phase, SIDE1]
        splits = phases[phase, SPLITS1]
        if kind == FORWARD:
            code = layers[layer, ACT]
            keep = layers[layer, KEEP_PREACT] != 0
            h_off = layers[layer, H_OFF]
            pre_off = layers[layer, Z_OFF] if keep else h_off
            post = POST_NONE if code == _IDENTITY and not keep else POST_ACTIVATE
            return (side, item, splits, rows, fan_out, fan_in, first, in_off, fan_in, False, first, False,
                    True, p_off, fan_out, False, False, pre_off, p_off + fan_in * fan_out,
                    post, code, slopes[layer], h_off, 0, 0)
        weight_items = ((fan_in + side) // side) * ((fan_out + side - 1) // side) * splits
        if item < weight_items:
            return (side, item, splits, fan_in + 1, fan_out, rows, first, in_off, fan_in, True, first, True,
                    False, layers[layer, D_OFF], fan_out, False, True, p_off, -1,
                    POST_NONE, 0, ZERO, 0, 0, 0)
        item -= weight_items
        if layer > 0:
            side = phases[phase, SIDE2]
            splits = phases[phase, SPLITS2]
            if item < ((rows + side - 1) // side) * ((fan_in + side - 1) // side) * splits:
                below = layer - 1
                code = layers[below, ACT]
                grad_src = layers[below, Z_OFF] if layers[below, KEEP_PREACT] != 0 else layers[below, H_OFF]
                post = POST_NONE if code == _IDENTITY else POST_GRAD_MASK
                return (side, item, splits, rows, fan_in, fan_out, False, layers[layer, D_OFF], fan_out, False,
                        False, False, True, p_off, fan_out, True, False, layers[below, D_OFF], -1,
                        post, code, slopes[below], grad_src, phases[phase, WORKSPACE2], phases[phase, COUNTERS2])
        return (0, item, 1, 0, 0, 0, False, 0, 0, False, False, False, False, 0, 0, False, False, 0, -1,
                POST_NONE, 0, ZERO, 0, 0, 0)

    sgd_at, momentum_at, nesterov_at = device.sgd_at, device.momentum_at, device.nesterov_at
    adagrad_at, rmsprop_at, adadelta_at = device.adagrad_at, device.rmsprop_at, device.adadelta_at
    adam_at, adamw_at = device.adam_at, device.adamw_at

    @cuda.jit(device=True)
    def is_bias(i, layers):
        """Whether flat parameter i is a bias (each layer is [W | b] at its P_OFF)."""
        for l in range(layers.shape[0]):
            bias_off = layers[l, P_OFF] + layers[l, FAN_IN] * layers[l, FAN_OUT]
            if bias_off <= i and i < bias_off + layers[l, FAN_OUT]:
                return True
        return False

    @cuda.jit(device=True)
    def update_item(item, step, params, grads, state0, state1, hyper, step_coeffs, layers, rule, weight_decay):
        """One chunk of every parameter, by the optimizer's rule (cuda_kernels' device
        functions, with cuda_backend's coefficients), after the L2 weight decay
        g += wd * p that nnkern.optim adds first (``weight_decay``: whether any applies;
        the biases take their own where it differs from the weights')."""
        start = item * update_chunk
        stop = min(params.shape[0], start + update_chunk)
        lr = step_coeffs[step, LR]
        split_decay = hyper[NEG_BIAS_WEIGHT_DECAY] != hyper[NEG_WEIGHT_DECAY]
        for i in range(start + cuda.threadIdx.x, stop, threads):
            neg_decay = hyper[NEG_WEIGHT_DECAY]
            decay = step_coeffs[step, DECAY]
            if split_decay and is_bias(i, layers):
                neg_decay = hyper[NEG_BIAS_WEIGHT_DECAY]
                decay = step_coeffs[step, BIAS_DECAY]
            if weight_decay and neg_decay != ZERO:
                sgd_at(i, grads, params, neg_decay)  # g -= (-wd) * p
            if rule == RULE_SGD:
                sgd_at(i, params, grads, lr)
            elif rule == RULE_MOMENTUM:
                momentum_at(i, params, grads, state0, lr, hyper[A])
            elif rule == RULE_NESTEROV:
                nesterov_at(i, params, grads, state0, lr, hyper[A])
            elif rule == RULE_ADAGRAD:
                adagrad_at(i, params, grads, state0, lr, hyper[EPS])
            elif rule == RULE_RMSPROP:
                rmsprop_at(i, params, grads, state0, lr, hyper[A], hyper[ONE_MINUS_A], hyper[EPS])
            elif rule == RULE_ADADELTA:
                adadelta_at(i, params, grads, state0, state1, lr, hyper[A], hyper[ONE_MINUS_A], hyper[EPS])
            elif rule == RULE_ADAM:
                adam_at(i, params, grads, state0, state1, lr, hyper[A], hyper[ONE_MINUS_A], hyper[B],
                        hyper[ONE_MINUS_B], step_coeffs[step, BIAS_CORRECTION1],
                        step_coeffs[step, BIAS_CORRECTION2], hyper[EPS])
            else:
                adamw_at(i, params, grads, state0, state1, decay, lr, hyper[A],
                         hyper[ONE_MINUS_A], hyper[B], hyper[ONE_MINUS_B], step_coeffs[step, BIAS_CORRECTION1],
                         step_coeffs[step, BIAS_CORRECTION2], hyper[EPS])

    @cuda.jit(device=True)
    def run_phase(phase, step, first_item, item_stride, x, y, order, shares, params, grads, state0, state1, acts,
                  ws, counters, layers, phases, slopes, hyper, step_coeffs, row_loss, row_correct, step_loss,
                  step_correct, status, n_samples, batch, rule, weight_decay, weighted, stop_on_nonfinite,
                  a_tile, b_tile, flag, row_buf, sum_buf):
        """This block's work items of one phase of one step (items first_item,
        first_item + item_stride, ...)."""
        base = step * batch
        rows = min(batch, n_samples - base)
        kind = phases[phase, KIND]
        layer = phases[phase, LAYER]
        n_items = _phase_items_device(layers, phases, phase, rows, params.shape[0], threads)
        for item in range(first_item, n_items, item_stride):
            if kind == LOSS:
                loss_item(item, rows, base, y, order, shares, weighted, acts, layers, slopes, step_coeffs, step,
                          row_loss, row_correct, row_buf)
                continue
            if kind == UPDATE:
                update_item(item, step, params, grads, state0, state1, hyper, step_coeffs, layers, rule,
                            weight_decay)
                continue
            (side, gemm_item, splits, M, N, K, a_is_x, a_off, a_ld, a_trans, gather, ones_row, b_is_params, b_off,
             b_ld, b_trans, dst_is_grads, dst_off, bias_off, post, code, slope, post_off, ws_off,
             counter_off) = gemm_job(kind, phase, layer, item, rows, layers, phases, slopes)
            if side == 0:
                loss_sum_item(rows, step, weighted, row_loss, row_correct, step_loss, step_correct, status,
                              stop_on_nonfinite, sum_buf)
                continue
            a = x if a_is_x else acts
            b = params if b_is_params else acts
            dst = grads if dst_is_grads else acts
            # the one call site of the three tile sizes' code
            if side == large_side:
                gemm_large(gemm_item, splits, M, N, K, a, a_off, a_ld, a_trans, gather, order, base, ones_row,
                       b, b_off, b_ld, b_trans, dst, dst_off, params, bias_off, post, code, slope, acts, post_off,
                       ws, ws_off, counters, counter_off, a_tile, b_tile, flag)
            elif side == medium_side:
                gemm_medium(gemm_item, splits, M, N, K, a, a_off, a_ld, a_trans, gather, order, base, ones_row,
                       b, b_off, b_ld, b_trans, dst, dst_off, params, bias_off, post, code, slope, acts, post_off,
                       ws, ws_off, counters, counter_off, a_tile, b_tile, flag)
            else:
                gemm_small(gemm_item, splits, M, N, K, a, a_off, a_ld, a_trans, gather, order, base, ones_row,
                       b, b_off, b_ld, b_trans, dst, dst_off, params, bias_off, post, code, slope, acts, post_off,
                       ws, ws_off, counters, counter_off, a_tile, b_tile, flag)

    vec = real[::1]
    common = (vec, types.int32[::1], types.int32[::1], vec, vec, vec, vec, vec, vec, vec, types.int32[::1],
              types.int64[:, ::1], types.int64[:, ::1], vec, vec, real[:, ::1], types.float64[::1],
              types.int32[::1], types.float64[::1], types.int32[::1], types.int64[::1], types.int64, types.int64,
              types.int64, types.boolean, types.boolean, types.boolean)

    def train_epoch(x, y, order, shares, params, grads, state0, state1, acts, ws, counters, layers, phases, slopes,
                    hyper, step_coeffs, row_loss, row_correct, step_loss, step_correct, status, n_samples, batch,
                    rule, weight_decay, weighted, stop_on_nonfinite, first_step, n_steps):
        """The persistent executor: steps first_step, ..., first_step + n_steps - 1, every
        phase's items spread over the (cooperative) grid, a grid-wide barrier after each
        phase."""
        a_tile = cuda.shared.array((TILE_K, tile_padded), real)
        b_tile = cuda.shared.array((TILE_K, tile_padded), real)
        flag = cuda.shared.array(1, types.int32)
        row_buf = cuda.shared.array(threads, real)
        sum_buf = cuda.shared.array(threads, types.float64)
        grid = cuda.cg.this_grid()
        for step in range(first_step, first_step + n_steps):
            if status[HALTED_AT] < step:  # every block reads it after the same barrier
                break
            for phase in range(phases.shape[0]):
                run_phase(phase, step, cuda.blockIdx.x, cuda.gridDim.x, x, y, order, shares, params, grads,
                          state0, state1, acts, ws, counters, layers, phases, slopes, hyper, step_coeffs, row_loss,
                          row_correct, step_loss, step_correct, status, n_samples, batch, rule, weight_decay,
                          weighted, stop_on_nonfinite, a_tile, b_tile, flag, row_buf, sum_buf)
                grid.sync()

    def train_phase(phase, step, x, y, order, shares, params, grads, state0, state1, acts, ws, counters, layers,
                    phases, slopes, hyper, step_coeffs, row_loss, row_correct, step_loss, step_correct, status,
                    n_samples, batch, rule, weight_decay, weighted, stop_on_nonfinite):
        """The launches executor: one phase of one step, one launch."""
        a_tile = cuda.shared.array((TILE_K, tile_padded), real)
        b_tile = cuda.shared.array((TILE_K, tile_padded), real)
        flag = cuda.shared.array(1, types.int32)
        row_buf = cuda.shared.array(threads, real)
        sum_buf = cuda.shared.array(threads, types.float64)
        if status[HALTED_AT] < step:
            return
        run_phase(phase, step, cuda.blockIdx.x, cuda.gridDim.x, x, y, order, shares, params, grads, state0,
                  state1, acts, ws, counters, layers, phases, slopes, hyper, step_coeffs, row_loss, row_correct,
                  step_loss, step_correct, status, n_samples, batch, rule, weight_decay, weighted,
                  stop_on_nonfinite, a_tile, b_tile, flag, row_buf, sum_buf)

    signatures = {
        "train_epoch": (train_epoch, (*common, types.int64, types.int64)),
        "train_phase": (train_phase, (types.int64, types.int64, *common)),
    }
    options = {"max_registers": max_registers} if max_registers and not numba.config.ENABLE_CUDASIM else {}
    return SimpleNamespace(signatures=signatures, scalar=f,
                           **{name: cuda.jit(pyfunc, **options) for name, (pyfunc, _) in signatures.items()})


FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def compile_targets():
    """Every (name, Python function, argument types) this module launches, for both
    dtypes: what the PTX check compiles."""
    return [(f"{name}[{dtype.name}]", pyfunc, argtypes)
            for dtype in FLOAT_DTYPES for name, (pyfunc, argtypes) in kernels(dtype).signatures.items()]


# ---------------------------------------------------------------------------------------
# The host side
# ---------------------------------------------------------------------------------------


def _executor_setting() -> str:
    setting = os.environ.get("NNKERN_CUDA_EXECUTOR", "auto").strip().lower()
    if setting not in ("auto", *EXECUTORS):
        raise ValueError(f"NNKERN_CUDA_EXECUTOR must be 'auto', 'persistent' or 'launches', got {setting!r}")
    return setting


def _max_registers() -> int:
    setting = os.environ.get("NNKERN_CUDA_MAX_REGISTERS", str(MAX_REGISTERS)).strip()
    if not setting.isdigit() or 0 < int(setting) < 32 or int(setting) > 255:
        raise ValueError(f"NNKERN_CUDA_MAX_REGISTERS must be 0 (no cap) or 32..255, got {setting!r}")
    return int(setting)


def _default_parallelism() -> int:
    if numba.config.ENABLE_CUDASIM:
        return SIMULATOR_PARALLELISM
    return BLOCKS_PER_SM * int(cuda.get_current_device().MULTIPROCESSOR_COUNT)


def data_fits(n_bytes: int) -> bool:
    """Whether a training set of ``n_bytes`` may be copied to the device (DEVICE_MEMORY_SHARE
    of the free memory)."""
    free, _total = cuda.current_context().get_memory_info()
    return n_bytes <= DEVICE_MEMORY_SHARE * free


class FusedCudaTrainer:
    """Training epochs of one MLP on the device, for one dtype, largest batch and data set.

    ``layers``: (W, b, dW, db, act_code, slope, keep_preact, w_states, b_states) per layer,
    the model's and optimizer's device arrays (the state tuples of 0-2 arrays), as for the
    CPU engines' ``FusedMLPStep``. ``x`` (n, fan_in) and ``y`` (n,) integer labels in
    range: host arrays, copied to the device here, once. ``executor``: one of EXECUTORS,
    or None for ``$NNKERN_CUDA_EXECUTOR`` ("auto": persistent, falling back to launches if
    the cooperative launch fails). ``parallelism``: the number of blocks each phase's work
    is sized for (default: BLOCKS_PER_SM per multiprocessor).
    """

    def __init__(self, layers, rule: int, dtype, batch_size: int, x, y, *, executor=None, parallelism=None):
        if rule not in RULES:
            raise ValueError(f"FusedCudaTrainer: unknown optimizer rule {rule}")
        setting = _executor_setting() if executor is None else executor
        if setting not in ("auto", *EXECUTORS):
            raise ValueError(f"FusedCudaTrainer: executor must be 'auto' or one of {EXECUTORS}, got {setting!r}")
        self.executor = "persistent" if setting == "auto" else setting
        self._fall_back = setting == "auto"
        self.dtype = np.dtype(dtype)
        self.rule = int(rule)
        self.batch_size = int(batch_size)
        self.block_side = SIMULATOR_BLOCK_SIDE if numba.config.ENABLE_CUDASIM else BLOCK_SIDE
        self.threads = self.block_side**2
        self.max_registers = _max_registers()
        self.kernels = kernels(self.dtype, self.block_side, self.max_registers)
        self.model_arrays = layers
        self.parallelism = int(parallelism or _default_parallelism())
        self.grid_blocks = None  # of the persistent executor, known once its kernel is compiled

        # The layer table and the flat buffers' layout.
        table = np.zeros((len(layers), LAYER_COLUMNS), np.int64)
        slopes = np.zeros(len(layers), self.dtype)
        p_size = acts_size = 0
        rows = self.batch_size
        for l, (w, _b, _gw, _gb, act, slope, keep_preact, _ws, _bs) in enumerate(layers):
            fan_in, fan_out = (int(d) for d in w.shape)
            table[l, FAN_IN], table[l, FAN_OUT] = fan_in, fan_out
            table[l, ACT], table[l, KEEP_PREACT] = act, bool(keep_preact)
            table[l, P_OFF] = p_size
            p_size += (fan_in + 1) * fan_out
            for column in (H_OFF, Z_OFF, D_OFF):
                if column == Z_OFF and not keep_preact:
                    continue
                table[l, column] = acts_size
                acts_size += rows * fan_out
            slopes[l] = slope
        self.table = table
        self.n_params = p_size
        self.n_states = len(layers[0][7])
        self.phases, ws_size, counters_size = self._plan(table)

        # Device memory: the data, the flat buffers, the per-epoch arrays.
        x = np.ascontiguousarray(x, dtype=self.dtype)
        self.n_samples = len(x)
        self.max_steps = -(-self.n_samples // self.batch_size)
        self.data = (cuda.to_device(x.reshape(-1)), cuda.to_device(np.ascontiguousarray(y, dtype=np.int32)))
        self.order = cuda.device_array(max(self.n_samples, self.batch_size), np.int32)
        self.shares = cuda.device_array(len(self.order), self.dtype)  # read only by weighted runs
        self.batch_data = None  # device buffers for the per-batch API (step), made on first use
        self.params = cuda.device_array(p_size, self.dtype)
        self.grads = cuda.device_array(p_size, self.dtype)
        self.states = [cuda.device_array(p_size, self.dtype) for _ in range(self.n_states)]
        self.states += [cuda.device_array(1, self.dtype)] * (2 - self.n_states)
        self.acts = cuda.device_array(max(acts_size, 1), self.dtype)
        self.ws = cuda.device_array(max(ws_size, 1), self.dtype)
        self.counters = cuda.to_device(np.zeros(max(counters_size, 1), np.int32))
        self.layers_device = cuda.to_device(table)
        self.phases_device = cuda.to_device(self.phases)
        self.slopes = cuda.to_device(slopes)
        self.hyper = cuda.device_array(HYPER_SIZE, self.dtype)
        self.step_coeffs = cuda.device_array((self.max_steps, STEP_COLUMNS), self.dtype)
        self.row_loss = cuda.device_array(rows, np.float64)
        self.row_correct = cuda.device_array(rows, np.int32)
        self.step_loss = cuda.device_array(self.max_steps, np.float64)
        self.step_correct = cuda.device_array(self.max_steps, np.int32)
        self.status = cuda.device_array(1, np.int64)

    # -- the plan ---------------------------------------------------------------------

    def _plan(self, table):
        """The phase table for a full batch, and the split-K workspace and counters it needs."""
        rows, parallelism = self.batch_size, self.parallelism
        n_layers = len(table)
        phases = []
        ws_size = counters_size = 0

        def split_storage(m, n, side, splits):
            tiles = -(-m // side) * -(-n // side)
            return (tiles * splits * side * side, tiles) if splits > 1 else (0, 0)

        for l in range(n_layers):
            fan_in, fan_out = int(table[l, FAN_IN]), int(table[l, FAN_OUT])
            side, splits = plan_gemm(rows, fan_out, fan_in, parallelism, self.block_side)
            ws, counters = split_storage(rows, fan_out, side, splits)
            ws_size, counters_size = max(ws_size, ws), max(counters_size, counters)
            phases.append([FORWARD, l, side, splits, 0, 0, 0, 0])
        phases.append([LOSS, n_layers - 1, 0, 0, 0, 0, 0, 0])
        for l in range(n_layers - 1, -1, -1):
            fan_in, fan_out = int(table[l, FAN_IN]), int(table[l, FAN_OUT])
            side1, splits1 = plan_gemm(fan_in + 1, fan_out, rows, parallelism, self.block_side)
            ws1, counters1 = split_storage(fan_in + 1, fan_out, side1, splits1)
            side2 = splits2 = 1
            ws2 = counters2 = 0
            if l > 0:
                side2, splits2 = plan_gemm(rows, fan_in, fan_out, parallelism, self.block_side)
                ws2, counters2 = split_storage(rows, fan_in, side2, splits2)
            # the input-gradient GEMM's partial tiles and counters follow the weight gradient's
            phases.append([BACKWARD, l, side1, splits1, side2, splits2, ws1, counters1])
            ws_size, counters_size = max(ws_size, ws1 + ws2), max(counters_size, counters1 + counters2)
        phases.append([UPDATE, 0, 0, 0, 0, 0, 0, 0])
        return np.array(phases, np.int64), ws_size, counters_size

    def first_call_note(self) -> str | None:
        """What ``fit(verbose=True)`` prints before the first epoch when the kernel it will
        launch has not been compiled in this process yet."""
        if numba.config.ENABLE_CUDASIM:
            return None
        kernel = self.kernels.train_epoch if self.executor == "persistent" else self.kernels.train_phase
        if kernel.overloads:
            return None
        return ("cuda: compiling the device training kernels (once per process and dtype; "
                "expect tens of seconds)")

    def launches_per_step(self) -> int:
        """Kernel launches per training step: 0 for the persistent executor (one launch per
        epoch), one per phase (2 L + 2) for the launches executor."""
        return 0 if self.executor == "persistent" else len(self.phases)

    # -- the model's arrays <-> the flat buffers --------------------------------------

    def _layout(self):
        """(flat buffer index, offset, model array) of every parameter-shaped array:
        index 0 params, 1 grads, 2 and 3 the optimizer states. The model's arrays are
        device arrays, or host arrays where the optimizer keeps its state there (as it does
        under the simulator, whose arrays do not look like device arrays to nnkern)."""
        for l, (w, b, gw, gb, _act, _slope, _keep, w_states, b_states) in enumerate(self.model_arrays):
            offset = int(self.table[l, P_OFF])
            bias_offset = offset + w.size
            yield 0, offset, w
            yield 0, bias_offset, b
            yield 1, offset, gw
            yield 1, bias_offset, gb
            for k, (ws, bs) in enumerate(zip(w_states, b_states)):
                yield 2 + k, offset, ws
                yield 2 + k, bias_offset, bs

    def _flat(self, index):
        return (self.params, self.grads, *self.states)[index]

    def load_model(self) -> None:
        """Parameters and optimizer state from the model's arrays into the flat buffers."""
        for index, offset, array in self._layout():
            if index != 1:
                self._flat(index)[offset:offset + array.size].copy_to_device(array.reshape(array.size))

    def store_model(self) -> None:
        """Parameters, gradients and optimizer state back into the model's arrays."""
        for index, offset, array in self._layout():
            flat = self._flat(index)[offset:offset + array.size]
            if isinstance(array, np.ndarray):  # state the optimizer keeps on the host
                flat.copy_to_host(array.reshape(array.size))
            else:
                array.reshape(array.size).copy_to_device(flat)

    # -- running ----------------------------------------------------------------------

    def _coefficients(self, hyper, rates, t0, steps, n_samples):
        """The hyperparameter array and the per-step coefficients, in the parameters'
        dtype, from float64 values as cuda_backend forms them."""
        values = np.zeros(HYPER_SIZE, np.float64)
        values[A], values[B], values[EPS] = hyper["a"], hyper["b"], hyper["eps"]
        values[ONE_MINUS_A], values[ONE_MINUS_B] = 1.0 - hyper["a"], 1.0 - hyper["b"]
        values[NEG_WEIGHT_DECAY] = -hyper["weight_decay"]
        values[NEG_BIAS_WEIGHT_DECAY] = -hyper["bias_weight_decay"]
        coeffs = np.ones((steps, STEP_COLUMNS), np.float64)
        coeffs[:, ROWS] = np.minimum(self.batch_size, n_samples - self.batch_size * np.arange(steps))
        coeffs[:, LR] = rates[:steps]
        if self.rule in (RULE_ADAM, RULE_ADAMW):
            beta1, beta2 = hyper["a"], hyper["b"]
            coeffs[:, BIAS_CORRECTION1] = [1.0 - beta1**t for t in range(t0 + 1, t0 + 1 + steps)]
            coeffs[:, BIAS_CORRECTION2] = [1.0 - beta2**t for t in range(t0 + 1, t0 + 1 + steps)]
        if self.rule == RULE_ADAMW:
            coeffs[:, DECAY] = [1.0 - lr * hyper["weight_decay"] for lr in rates[:steps]]
            coeffs[:, BIAS_DECAY] = [1.0 - lr * hyper["bias_weight_decay"] for lr in rates[:steps]]
        return values.astype(self.dtype), coeffs.astype(self.dtype)

    def run(self, order, hyper, rates, t0: int, *, stop_on_nonfinite: bool, batch=None, shares=None):
        """Train on the data set in ``order`` (int array of sample indices; steps of
        batch_size in it, the last one shorter), or on one host ``batch`` (x, y) for one
        step. ``shares``: for a weighted mean loss, each entry of ``order``'s (or each
        batch row's) share of its step's loss (float, summing to 1 over each step's rows);
        None: each step's plain mean. ``hyper``: {"a", "b", "eps", "weight_decay",
        "bias_weight_decay"} as floats; ``rates``: the learning rate of each step; ``t0``:
        the optimizer's step count before. Works on the flat buffers (load_model /
        store_model move the model's arrays). Returns (mean loss per step, right
        predictions per step, rows per step) for the steps that ran: up to the first step
        whose loss was not finite when ``stop_on_nonfinite``, else all."""
        if batch is not None:
            if not 1 <= len(batch[1]) <= self.batch_size:
                raise ValueError(f"FusedCudaTrainer: batch of {len(batch[1])} rows, expected 1..{self.batch_size}")
            x, y = self._stage_batch(*batch)
            order = np.arange(len(batch[1]), dtype=np.int32)
        else:
            x, y = self.data
            order = np.ascontiguousarray(order, dtype=np.int32)
        if shares is not None and np.shape(shares) != order.shape:
            raise ValueError(f"FusedCudaTrainer: {len(shares)} row shares for {len(order)} rows")
        steps = -(-len(order) // self.batch_size)
        if steps == 0:
            return [], [], []
        if len(rates) < steps:
            raise ValueError(f"FusedCudaTrainer: {len(rates)} learning rates for {steps} steps")
        values, coeffs = self._coefficients(hyper, rates, t0, steps, len(order))
        self.order[:len(order)].copy_to_device(order)
        if shares is not None:
            self.shares[:len(order)].copy_to_device(np.ascontiguousarray(shares, dtype=self.dtype))
        self.hyper.copy_to_device(values)
        self.step_coeffs[:steps].copy_to_device(coeffs)
        self.status.copy_to_device(np.array([steps], np.int64))
        args = (x, y, self.order, self.shares, self.params, self.grads, self.states[0], self.states[1], self.acts, self.ws,
                self.counters, self.layers_device, self.phases_device, self.slopes, self.hyper, self.step_coeffs,
                self.row_loss, self.row_correct, self.step_loss, self.step_correct, self.status,
                len(order), self.batch_size, self.rule,
                bool(hyper["weight_decay"] or hyper["bias_weight_decay"]) and self.rule != RULE_ADAMW,
                shares is not None, bool(stop_on_nonfinite))
        if self.executor == "persistent":
            try:
                self._launch_persistent(args, steps)
            except Exception as exc:  # compiling, linking or the cooperative launch failed
                if not self._fall_back:
                    raise
                warnings.warn(f"nnkern cuda: the persistent training kernel failed ({type(exc).__name__}: "
                              f"{exc}); using one launch per phase instead", RuntimeWarning, stacklevel=3)
                self.executor, self._fall_back = "launches", False
                self._launch_phases(args, steps)
        else:
            self._launch_phases(args, steps)
        halted = int(self.status.copy_to_host()[0])
        ran = min(steps, halted + 1)
        losses = self.step_loss[:ran].copy_to_host()
        correct = self.step_correct[:ran].copy_to_host()
        rows = coeffs[:ran, ROWS].astype(np.int64)
        return losses, correct, rows

    def _stage_batch(self, xb, yb):
        if self.batch_data is None:
            fan_in = int(self.table[0, FAN_IN])
            self.batch_data = (cuda.device_array(self.batch_size * fan_in, self.dtype),
                               cuda.device_array(self.batch_size, np.int32))
        x, y = self.batch_data
        rows = len(yb)
        x[:xb.size].copy_to_device(np.ascontiguousarray(xb, dtype=self.dtype).reshape(-1))
        y[:rows].copy_to_device(np.ascontiguousarray(yb, dtype=np.int32))
        return x, y

    def _launch_persistent(self, args, steps):
        kernel = self.kernels.train_epoch
        if self.grid_blocks is None:
            argtypes = self.kernels.signatures["train_epoch"][1]
            if not numba.config.ENABLE_CUDASIM:
                kernel.compile(argtypes)
            most = kernel.overloads[argtypes].max_cooperative_grid_blocks(self.threads)
            if most < 1:
                raise RuntimeError("the training kernel does not fit one block per multiprocessor")
            self.grid_blocks = min(most, self.parallelism)
        launch = kernel[self.grid_blocks, self.threads]
        for first in range(0, steps, STEPS_PER_LAUNCH):
            launch(*args, first, min(STEPS_PER_LAUNCH, steps - first))

    def _launch_phases(self, args, steps):
        kernel = self.kernels.train_phase
        rows = min(self.batch_size, self.n_samples)
        grids = [max(1, int(_phase_items(self.table, self.phases, phase, rows, self.n_params, self.threads)))
                 for phase in range(len(self.phases))]
        launches = [kernel[grid, self.threads] for grid in grids]
        for step in range(steps):
            for phase, launch in enumerate(launches):
                launch(phase, step, *args)
