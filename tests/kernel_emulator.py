"""Run the Metal / CUDA factored-attention kernel BODIES on the CPU, for tests on machines
without those GPUs.

The body text (exactly what mlx_bald ships) is compiled with g++ inside a small shim: the
signature MLX would generate, address-space keywords defined away, threadgroup/__shared__
memory as statics, and simdgroup/warp reductions emulated with one std::thread per GPU
thread and barriers. One threadgroup runs at a time. This checks the kernel's indexing,
online softmax and reductions, not GPU-specific compilation or speed.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from mlx_bald.kernels.common import kernel_source

_COMMON = r"""
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>
#include <vector>
#include <algorithm>
struct uint3 { unsigned x, y, z; };

struct Group {  // the threads of the one threadgroup (block) that runs at a time
  int n_threads;
  std::barrier<> all;
  std::vector<std::unique_ptr<std::barrier<>>> simd;
  std::vector<float> slots;
  explicit Group(int n) : n_threads(n), all(n), slots(n) {
    for (int i = 0; i < n / 32; ++i) simd.emplace_back(new std::barrier<>(32));
  }
};
thread_local Group* g_group = nullptr;
thread_local int g_tid = 0;

template <class Op> float simd_reduce(float x, Op op) {
  int lane = g_tid % 32, sg = g_tid / 32;
  g_group->slots[g_tid] = x;
  g_group->simd[sg]->arrive_and_wait();
  float r = g_group->slots[sg * 32];
  for (int i = 1; i < 32; ++i) r = op(r, g_group->slots[sg * 32 + i]);
  g_group->simd[sg]->arrive_and_wait();
  (void)lane;
  return r;
}
float shfl_xor(float x, int offset) {
  int sg = g_tid / 32, lane = g_tid % 32;
  g_group->slots[g_tid] = x;
  g_group->simd[sg]->arrive_and_wait();
  float r = g_group->slots[sg * 32 + (lane ^ offset)];
  g_group->simd[sg]->arrive_and_wait();
  return r;
}
template <class T> std::vector<T> read_file(const char* path) {
  FILE* f = std::fopen(path, "rb");
  std::fseek(f, 0, SEEK_END);
  long n = std::ftell(f);
  std::fseek(f, 0, SEEK_SET);
  std::vector<T> v(n / sizeof(T));
  if (std::fread(v.data(), 1, n, f) != size_t(n)) std::abort();
  std::fclose(f);
  return v;
}
"""

_METAL_SHIM = r"""
#define device
#define constant
#define threadgroup static
namespace metal {
using std::max;
using std::min;
inline float exp(float x) { return std::exp(x); }
template <class T> using numeric_limits = std::numeric_limits<T>;
enum class mem_flags { mem_threadgroup };
inline void threadgroup_barrier(mem_flags) { g_group->all.arrive_and_wait(); }
inline float simd_sum(float x) { return simd_reduce(x, [](float a, float b) { return a + b; }); }
inline float simd_max(float x) { return simd_reduce(x, [](float a, float b) { return std::max(a, b); }); }
}  // namespace metal

template <typename T, int DK, int DV, int TG, bool HAS_MASK>
void kernel_body(const device T* q, const constant int64_t* q_strides,
                 const device T* k, const constant int64_t* k_strides,
                 const device T* v, const constant int64_t* v_strides,
                 const device int* kv_len, const device float* mask, const constant int* dims,
                 device T* out, uint3 threadgroup_position_in_grid, uint3 threadgroups_per_grid,
                 unsigned thread_index_in_threadgroup, unsigned thread_index_in_simdgroup,
                 unsigned simdgroup_index_in_threadgroup) {
@BODY@
}

void run_thread(const float* q, const int64_t* qs, const float* k, const int64_t* ks,
                const float* v, const int64_t* vs, const int* kv_len, const float* mask,
                const int* dims, float* out, uint3 group, uint3 groups, int tid) {
  g_tid = tid;
  kernel_body<float, @DK@, @DV@, @TG@, @HAS_MASK@>(q, qs, k, ks, v, vs, kv_len, mask, dims, out,
      group, groups, tid, tid % 32, tid / 32);
}
"""

_CUDA_SHIM = r"""
#define __device__
#define __forceinline__ inline
#define __shared__ static
struct dim3 { unsigned x, y, z; };
thread_local dim3 blockIdx, threadIdx, gridDim;
inline float __shfl_xor_sync(unsigned, float x, int offset) { return shfl_xor(x, offset); }
inline void __syncthreads() { g_group->all.arrive_and_wait(); }
inline float __int_as_float(unsigned bits) { float f; std::memcpy(&f, &bits, 4); return f; }
inline float fmaxf(float a, float b) { return std::fmax(a, b); }
inline float expf(float x) { return std::exp(x); }
using std::min;
using Strides = std::array<int64_t, 8>;
@HEADER@
template <typename T_, int DK_, int DV_, int TG_, bool HAS_MASK_>
void kernel_body(const float* q, const Strides q_strides, const float* k, const Strides k_strides,
                 const float* v, const Strides v_strides, const int* kv_len, const float* mask,
                 const int* dims, float* out) {
  using T = T_;
  constexpr int DK = DK_, DV = DV_, TG = TG_;
  constexpr bool HAS_MASK = HAS_MASK_;
@BODY@
}

void run_thread(const float* q, const int64_t* qs, const float* k, const int64_t* ks,
                const float* v, const int64_t* vs, const int* kv_len, const float* mask,
                const int* dims, float* out, uint3 group, uint3 groups, int tid) {
  g_tid = tid;
  blockIdx = {group.x, group.y, group.z};
  gridDim = {groups.x, groups.y, groups.z};
  threadIdx = {unsigned(tid), 0, 0};
  Strides a{}, b{}, c{};
  for (int i = 0; i < 4; ++i) { a[i] = qs[i]; b[i] = ks[i]; c[i] = vs[i]; }
  kernel_body<float, @DK@, @DV@, @TG@, @HAS_MASK@>(q, a, k, b, v, c, kv_len, mask, dims, out);
}
"""

_MAIN = r"""
int main(int argc, char** argv) {
  // argv: dir; files q k v kv_len mask meta(int64: B H Lq Lk DV, 3x4 strides)
  std::string d = argv[1];
  auto q = read_file<float>((d + "/q").c_str());
  auto k = read_file<float>((d + "/k").c_str());
  auto v = read_file<float>((d + "/v").c_str());
  auto kv_len = read_file<int>((d + "/kv_len").c_str());
  auto mask = read_file<float>((d + "/mask").c_str());
  auto meta = read_file<int64_t>((d + "/meta").c_str());
  int B = meta[0], H = meta[1], Lq = meta[2], Lk = meta[3], DVv = meta[4];
  const int64_t* qs = &meta[5]; const int64_t* ks = &meta[9]; const int64_t* vs = &meta[13];
  int dims[2] = {Lq, Lk};
  std::vector<float> out(size_t(B) * H * Lq * DVv, NAN);
  for (unsigned b = 0; b < unsigned(B); ++b)
    for (unsigned h = 0; h < unsigned(H); ++h)
      for (unsigned qi = 0; qi < unsigned(Lq); ++qi) {
        Group group(@TG@);
        std::vector<std::thread> threads;
        for (int t = 0; t < @TG@; ++t)
          threads.emplace_back([&, t] {
            g_group = &group;
            run_thread(q.data(), qs, k.data(), ks, v.data(), vs, kv_len.data(), mask.data(),
                       dims, out.data(), uint3{qi, h, b}, uint3{unsigned(Lq), unsigned(H), unsigned(B)}, t);
          });
        for (auto& th : threads) th.join();
      }
  FILE* f = std::fopen((d + "/out").c_str(), "wb");
  std::fwrite(out.data(), sizeof(float), out.size(), f);
  std::fclose(f);
  return 0;
}
"""


def compiler_available() -> bool:
    return shutil.which("g++") is not None


def _binary(kind: str, dk: int, dv: int, tg: int, has_mask: bool) -> Path:
    filename = "factored_attention.metal" if kind == "metal" else "factored_attention.cu"
    header, body = kernel_source(filename)
    shim = _METAL_SHIM if kind == "metal" else _CUDA_SHIM
    src = (_COMMON + ("#include <array>\n" if kind == "cuda" else "") + shim + _MAIN)
    src = (src.replace("@HEADER@", header).replace("@BODY@", body)
           .replace("@DK@", str(dk)).replace("@DV@", str(dv)).replace("@TG@", str(tg))
           .replace("@HAS_MASK@", "true" if has_mask else "false"))
    key = hashlib.sha1(src.encode()).hexdigest()[:16]
    out_dir = Path(tempfile.gettempdir()) / "mlx_bald_kernel_emulator"
    out_dir.mkdir(exist_ok=True)
    exe = out_dir / f"{kind}_{key}"
    if not exe.exists():
        cpp = out_dir / f"{kind}_{key}.cpp"
        cpp.write_text(src)
        subprocess.run(["g++", "-std=c++20", "-O1", "-pthread", "-w", str(cpp), "-o",
                        str(exe) + ".tmp"], check=True, capture_output=True, text=True)
        Path(str(exe) + ".tmp").rename(exe)
    return exe


def run_kernel_body(kind: str, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                    kv_len: np.ndarray, mask: np.ndarray | None, tg: int) -> np.ndarray:
    """Emulate one launch. q/k/v may be non-contiguous numpy views (the kernel reads strides);
    the score scale must already be applied to q."""
    B, H, Lq, dk = q.shape
    Lk, dv = k.shape[2], v.shape[3]
    exe = _binary(kind, dk, dv, tg, mask is not None)
    with tempfile.TemporaryDirectory() as d:
        # hand over each array's underlying buffer plus its element strides
        metas = []
        for name, arr in (("q", q), ("k", k), ("v", v)):
            base = arr
            while base.base is not None and isinstance(base.base, np.ndarray):
                base = base.base
            base = np.ascontiguousarray(base, dtype=np.float32)
            offset = (arr.__array_interface__["data"][0] - base.__array_interface__["data"][0])
            assert offset == 0, "views must start at their base buffer"
            base.tofile(f"{d}/{name}")
            metas += [s // arr.itemsize for s in arr.strides]
        np.ascontiguousarray(kv_len, dtype=np.int32).tofile(f"{d}/kv_len")
        (np.zeros(1, np.float32) if mask is None
         else np.ascontiguousarray(mask, dtype=np.float32)).tofile(f"{d}/mask")
        np.array([B, H, Lq, Lk, dv] + metas, dtype=np.int64).tofile(f"{d}/meta")
        subprocess.run([str(exe), d], check=True, timeout=120)
        return np.fromfile(f"{d}/out", dtype=np.float32).reshape(B, H, Lq, dv)
