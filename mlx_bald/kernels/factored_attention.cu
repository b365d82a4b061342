// Factored attention for mx.fast.cuda_kernel: the text above the BODY marker is the
// kernel's header (helpers), the text below it the kernel body (MLX writes the signature
// and declares the template arguments T, DK, DV, TG, HAS_MASK as constexpr values).
//
// The same algorithm as factored_attention.metal: one block per (query, head, batch);
// TG threads (a multiple of 32) split the keys, each keeping an online-softmax state;
// the states are merged with warp shuffles and, across warps, through shared memory.
// Inputs: q [B,H,Lq,DK], k [B,H,Lk,DK], v [B,H,Lk,DV] of type T,
// kv_len int32 [B], mask float [Lq,Lk] (read only when HAS_MASK), dims int32 [2] =
// (Lq, Lk). Output out [B,H,Lq,DV]. The score scale is already applied to q.
// Grid (Lq*TG, H, B) threads, block (TG, 1, 1).

__device__ __forceinline__ float fa_warp_max(float x) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  }
  return x;
}

__device__ __forceinline__ float fa_warp_sum(float x) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  }
  return x;
}

// @@BODY@@
constexpr int NWARP = TG / 32;
__shared__ float sh_max[NWARP];
__shared__ float sh_sum[NWARP];
__shared__ float sh_acc[NWARP * DV];
const float neg_inf = __int_as_float(0xff800000);  // -inf

const int qi = blockIdx.x;
const int h = blockIdx.y;
const int b = blockIdx.z;
const int n_heads = gridDim.y;
const int n_queries = dims[0];
const int n_keys = dims[1];
const int tid = threadIdx.x;
const int lane = tid & 31;
const int warp = tid >> 5;

const int n_valid = min(n_keys, static_cast<int>(kv_len[b]));
// q, k, v may be strided views (batch 0-strided when broadcast): index with strides
const int64_t qs = q_strides[3];
const int64_t ks = k_strides[2], kd = k_strides[3];
const int64_t vs = v_strides[2], vd = v_strides[3];
const T* q_row = q + b * q_strides[0] + h * q_strides[1] + qi * q_strides[2];
const T* k_head = k + b * k_strides[0] + h * k_strides[1];
const T* v_head = v + b * v_strides[0] + h * v_strides[1];

float qr[DK];
for (int d = 0; d < DK; ++d) {
  qr[d] = static_cast<float>(q_row[d * qs]);
}

float m = neg_inf;
float l = 0.0f;
float acc[DV];
for (int d = 0; d < DV; ++d) {
  acc[d] = 0.0f;
}

for (int j = tid; j < n_valid; j += TG) {
  const T* k_row = k_head + j * ks;
  float s = 0.0f;
  for (int d = 0; d < DK; ++d) {
    s += qr[d] * static_cast<float>(k_row[d * kd]);
  }
  if (HAS_MASK) {
    s += static_cast<float>(mask[static_cast<size_t>(qi) * n_keys + j]);
  }
  if (s == neg_inf) {
    continue;  // a masked key adds nothing (and must not make exp(-inf - -inf) = NaN)
  }
  const float m_new = fmaxf(m, s);
  const float correction = expf(m - m_new);  // 0 on the first key (m = -inf)
  const float p = expf(s - m_new);
  l = l * correction + p;
  const T* v_row = v_head + j * vs;
  for (int d = 0; d < DV; ++d) {
    acc[d] = acc[d] * correction + p * static_cast<float>(v_row[d * vd]);
  }
  m = m_new;
}

// 1. the maximum over all threads of the block
const float m_warp = fa_warp_max(m);
if (lane == 0) {
  sh_max[warp] = m_warp;
}
__syncthreads();
float m_all = neg_inf;
for (int i = 0; i < NWARP; ++i) {
  m_all = fmaxf(m_all, sh_max[i]);
}

// 2. rescale every thread's partial sums to m_all, then add them up
const float rescale = (m == neg_inf) ? 0.0f : expf(m - m_all);
const float l_warp = fa_warp_sum(l * rescale);
if (lane == 0) {
  sh_sum[warp] = l_warp;
}
for (int d = 0; d < DV; ++d) {
  const float a = fa_warp_sum(acc[d] * rescale);
  if (lane == 0) {
    sh_acc[warp * DV + d] = a;
  }
}
__syncthreads();

float l_all = 0.0f;
for (int i = 0; i < NWARP; ++i) {
  l_all += sh_sum[i];
}
const int64_t bh = static_cast<int64_t>(b) * n_heads + h;
T* out_row = out + (bh * n_queries + qi) * DV;  // out is row contiguous
for (int d = tid; d < DV; d += TG) {
  float a = 0.0f;
  for (int i = 0; i < NWARP; ++i) {
    a += sh_acc[i * DV + d];
  }
  out_row[d] = static_cast<T>(a / l_all);
}
