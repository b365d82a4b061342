// Factored attention, the body of an mx.fast.metal_kernel (MLX writes the signature).
//
// One threadgroup per (query, head, batch); TG threads (a multiple of 32) split the keys,
// each keeping an online-softmax state (running max m, running sum l, weighted sum acc of
// values) over its keys; the states are then merged with simd reductions and, across
// simdgroups, through threadgroup memory.
//
// Inputs: q [B,H,Lq,DK], k [B,H,Lk,DK], v [B,H,Lk,DV] of type T,
//   kv_len int32 [B] (keys at index >= kv_len[b] are absent), mask float [Lq,Lk] additive
//   (read only when HAS_MASK), dims int32 [2] = (Lq, Lk).
// Output: out [B,H,Lq,DV] of type T. The score scale is already applied to q.
// Template: T, DK, DV, TG, HAS_MASK. Grid (Lq*TG, H, B), threadgroup (TG, 1, 1).
// Small inputs may arrive in the constant address space, hence `auto` pointers.

constexpr int NSG = TG / 32;
threadgroup float tg_max[NSG];
threadgroup float tg_sum[NSG];
threadgroup float tg_acc[NSG * DV];
const float neg_inf = -metal::numeric_limits<float>::infinity();

const int qi = int(threadgroup_position_in_grid.x);
const int h = int(threadgroup_position_in_grid.y);
const int b = int(threadgroup_position_in_grid.z);
const int n_heads = int(threadgroups_per_grid.y);
const int n_queries = dims[0];
const int n_keys = dims[1];
const int tid = int(thread_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
const int sg = int(simdgroup_index_in_threadgroup);

const int n_valid = metal::min(n_keys, int(kv_len[b]));
// q, k, v may be strided views (batch 0-strided when broadcast): index with strides
const int64_t qs = q_strides[3];
const int64_t ks = k_strides[2], kd = k_strides[3];
const int64_t vs = v_strides[2], vd = v_strides[3];
auto q_row = q + b * q_strides[0] + h * q_strides[1] + qi * q_strides[2];
auto k_head = k + b * k_strides[0] + h * k_strides[1];
auto v_head = v + b * v_strides[0] + h * v_strides[1];

float qr[DK];
for (int d = 0; d < DK; ++d) {
  qr[d] = float(q_row[d * qs]);
}

float m = neg_inf;
float l = 0.0f;
float acc[DV];
for (int d = 0; d < DV; ++d) {
  acc[d] = 0.0f;
}

for (int j = tid; j < n_valid; j += TG) {
  auto k_row = k_head + j * ks;
  float s = 0.0f;
  for (int d = 0; d < DK; ++d) {
    s += qr[d] * float(k_row[d * kd]);
  }
  if (HAS_MASK) {
    s += float(mask[size_t(qi) * size_t(n_keys) + size_t(j)]);
  }
  if (s == neg_inf) {
    continue;  // a masked key adds nothing (and must not make exp(-inf - -inf) = NaN)
  }
  const float m_new = metal::max(m, s);
  const float correction = metal::exp(m - m_new);  // 0 on the first key (m = -inf)
  const float p = metal::exp(s - m_new);
  l = l * correction + p;
  auto v_row = v_head + j * vs;
  for (int d = 0; d < DV; ++d) {
    acc[d] = acc[d] * correction + p * float(v_row[d * vd]);
  }
  m = m_new;
}

// 1. the maximum over all threads of the group
const float m_simd = metal::simd_max(m);
if (lane == 0) {
  tg_max[sg] = m_simd;
}
metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup);
float m_all = neg_inf;
for (int i = 0; i < NSG; ++i) {
  m_all = metal::max(m_all, tg_max[i]);
}

// 2. rescale every thread's partial sums to m_all, then add them up
const float rescale = (m == neg_inf) ? 0.0f : metal::exp(m - m_all);
const float l_simd = metal::simd_sum(l * rescale);
if (lane == 0) {
  tg_sum[sg] = l_simd;
}
for (int d = 0; d < DV; ++d) {
  const float a = metal::simd_sum(acc[d] * rescale);
  if (lane == 0) {
    tg_acc[sg * DV + d] = a;
  }
}
metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup);

float l_all = 0.0f;
for (int i = 0; i < NSG; ++i) {
  l_all += tg_sum[i];
}
const int64_t bh = int64_t(b) * n_heads + h;
auto out_row = out + (bh * n_queries + qi) * DV;  // out is row contiguous
for (int d = tid; d < DV; d += TG) {
  float a = 0.0f;
  for (int i = 0; i < NSG; ++i) {
    a += tg_acc[i * DV + d];
  }
  out_row[d] = T(a / l_all);
}
