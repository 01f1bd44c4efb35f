// Decode attention read straight from the paged KV cache, for the CPU (runtime/layers/cpu_attention.py
// builds it on first use). One query per sequence: for each sequence and KV head, the scores of the
// query heads sharing that KV head against every cached key, found through the block table, a
// softmax, and the values weighed by it — the keys and values are read once, in place, where the
// plain-torch path first copies each sequence's context into a padded tensor for SDPA.
//
// Numerics follow SDPA's CPU flash kernel for one key block: scores in fp32 from the input-type
// values, scaled, softmax in fp32 with the sum of unrounded exponentials, the weights rounded to
// the input type before they weigh the values (flash does the same before its second GEMM), the
// sum in fp32, one rounding of the output. What differs is only the order of fp32 additions.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

constexpr int64_t LANES = 16;

template <typename T>
constexpr bool kVectorized =
#ifdef __AVX512F__
    std::is_same<T, c10::BFloat16>::value || std::is_same<T, float>::value;
#else
    false;
#endif

#ifdef __AVX512F__
inline __m512 load16(const c10::BFloat16* p) {  // bf16 -> fp32 is the bits shifted up by 16
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
#endif

// out[r] = q[r] . key for the `rows` query heads sharing this key. The AVX-512 path (dim a multiple
// of 16, at most 16 rows) converts each 16 values of the key once for every row.
template <typename T>
inline void dots(const float* __restrict__ q, const T* __restrict__ key, int64_t dim, int64_t rows,
                 float* __restrict__ out) {
#ifdef __AVX512F__
  if constexpr (kVectorized<T>) {
    if (dim % LANES == 0 && rows <= 16) {
      __m512 acc[16];
      for (int64_t r = 0; r < rows; ++r) acc[r] = _mm512_setzero_ps();
      for (int64_t d = 0; d < dim; d += LANES) {
        const __m512 k = load16(key + d);
        for (int64_t r = 0; r < rows; ++r) acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(q + r * dim + d), k, acc[r]);
      }
      for (int64_t r = 0; r < rows; ++r) out[r] = _mm512_reduce_add_ps(acc[r]);
      return;
    }
  }
#endif
  for (int64_t r = 0; r < rows; ++r) {
    float sum = 0.f;
    for (int64_t d = 0; d < dim; ++d) sum += q[r * dim + d] * static_cast<float>(key[d]);
    out[r] = sum;
  }
}

// acc[r] += p[r * stride] * value for each of the `rows` query heads: the value converted once.
template <typename T>
inline void weigh(const T* __restrict__ value, const float* __restrict__ p, int64_t stride, int64_t dim, int64_t rows,
                  float* __restrict__ acc) {
#ifdef __AVX512F__
  if constexpr (kVectorized<T>) {
    if (dim % LANES == 0) {
      for (int64_t d = 0; d < dim; d += LANES) {
        const __m512 v = load16(value + d);
        for (int64_t r = 0; r < rows; ++r) {
          float* a = acc + r * dim + d;
          _mm512_storeu_ps(a, _mm512_fmadd_ps(_mm512_set1_ps(p[r * stride]), v, _mm512_loadu_ps(a)));
        }
      }
      return;
    }
  }
#endif
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t d = 0; d < dim; ++d) acc[r * dim + d] += p[r * stride] * static_cast<float>(value[d]);
}

// exp(x) for x <= 0 (a score minus its row's maximum): Cephes' expf, a degree-5 polynomial on the
// remainder after a power of two, written without calls so that the loop vectorizes; within 2 ulp.
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.3f);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

template <typename T>
void decode(const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& tables,
            const at::Tensor& lens, at::Tensor& out, float scale, int64_t window) {
  const int64_t batch = query.size(0), heads = query.size(1), dim = query.size(2);
  const int64_t block = k_cache.size(1), kv_heads = k_cache.size(2), per_kv = heads / kv_heads;
  const int64_t width = tables.size(1);
  const T* qp = query.data_ptr<T>();
  const T* kp = k_cache.data_ptr<T>();
  const T* vp = v_cache.data_ptr<T>();
  const int64_t* tp = tables.data_ptr<int64_t>();
  const int64_t* lp = lens.data_ptr<int64_t>();
  T* op = out.data_ptr<T>();
  constexpr bool reduced = !std::is_same<T, float>::value;
  // A task is one sequence with all its KV heads, so each cached row ([kv_heads, dim]) is read
  // whole and in order — the hardware prefetcher streams a block; a task per head read a third of
  // each row and ran at a third of the speed once the cache was cold. With fewer sequences than
  // threads, a task is one KV head of a sequence.
  const int64_t split = batch < at::get_num_threads() ? kv_heads : 1, span = kv_heads / split;
  at::parallel_for(0, batch * split, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> q(heads * dim), acc(heads * dim), row(per_kv), total(heads), scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / split, h0 = (task % split) * span, h1 = h0 + span, len = lp[b];
      const int64_t first = window > 0 ? std::max<int64_t>(0, len - window) : 0, n = len - first;
      const int64_t* table = tp + b * width;
      const int64_t r0 = h0 * per_kv, r1 = h1 * per_kv;  // this task's query heads
      const T* own = qp + b * heads * dim;
      for (int64_t i = r0 * dim; i < r1 * dim; ++i) q[i] = static_cast<float>(own[i]);
      scores.resize(heads * n);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t pos = first + j, slot = table[pos / block] * block + pos % block;
        for (int64_t h = h0; h < h1; ++h) {
          dots(q.data() + h * per_kv * dim, kp + (slot * kv_heads + h) * dim, dim, per_kv, row.data());
          for (int64_t r = 0; r < per_kv; ++r) scores[(h * per_kv + r) * n + j] = row[r] * scale;
        }
      }
      for (int64_t r = r0; r < r1; ++r) {
        float* s = scores.data() + r * n;
        const float top = *std::max_element(s, s + n);
        float sum = 0.f;
        for (int64_t j = 0; j < n; ++j) s[j] = exp_nonpositive(s[j] - top);
        for (int64_t j = 0; j < n; ++j) sum += s[j];
        if (reduced)
          for (int64_t j = 0; j < n; ++j) s[j] = static_cast<float>(static_cast<T>(s[j]));
        total[r] = sum;
      }
      std::fill(acc.begin() + r0 * dim, acc.begin() + r1 * dim, 0.f);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t pos = first + j, slot = table[pos / block] * block + pos % block;
        for (int64_t h = h0; h < h1; ++h)
          weigh(vp + (slot * kv_heads + h) * dim, scores.data() + h * per_kv * n + j, n, dim, per_kv,
                acc.data() + h * per_kv * dim);
      }
      T* dst = op + b * heads * dim;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t d = 0; d < dim; ++d) dst[r * dim + d] = static_cast<T>(acc[r * dim + d] / total[r]);
    }
  });
}

// Rows [T, kv_heads, dim] (each row's kv_heads * dim values contiguous) copied to their cache slots:
// what the plain path's write_kv does with index_copy_, here inside the same call.
template <typename T>
void write_rows(const at::Tensor& rows, const at::Tensor& cache, const int64_t* slots) {
  const int64_t count = rows.size(0), width = cache.size(2) * cache.size(3), stride = rows.stride(0);
  const T* src = rows.data_ptr<T>();
  T* dst = cache.data_ptr<T>();
  for (int64_t t = 0; t < count; ++t) std::memcpy(dst + slots[t] * width, src + t * stride, width * sizeof(T));
}

at::Tensor rows_of(const at::Tensor& x) {  // a split's view keeps its rows; anything else is copied
  return x.dim() == 3 && x.stride(2) == 1 && x.stride(1) == x.size(2) ? x : x.contiguous();
}

}  // namespace

// query [B, heads, dim]; k_cache, v_cache [blocks, block_size, kv_heads, dim]; block_tables [B, width]
// int64; context_lens [B] int64 (each >= 1, the query's own key included); window 0 for none.
// key, value [T, kv_heads, dim] and slot_mapping [T], when given, are written into the caches first:
// a step of decodes only is then one call per layer instead of the write's and the attention's.
at::Tensor paged_decode_attention(const at::Tensor& query, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                  const at::Tensor& block_tables, const at::Tensor& context_lens, double scale,
                                  int64_t window, const c10::optional<at::Tensor>& key,
                                  const c10::optional<at::Tensor>& value, const c10::optional<at::Tensor>& slot_mapping) {
  TORCH_CHECK(query.dim() == 3 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(),
              "paged_decode_attention: query [B, heads, dim] and caches [blocks, block_size, kv_heads, dim]");
  TORCH_CHECK(query.size(2) == k_cache.size(3) && query.size(1) % k_cache.size(2) == 0,
              "paged_decode_attention: head_dim differs or heads is not a multiple of kv_heads");
  TORCH_CHECK(query.scalar_type() == k_cache.scalar_type() && k_cache.scalar_type() == v_cache.scalar_type(),
              "paged_decode_attention: query and caches must share a dtype");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "paged_decode_attention: caches must be contiguous");
  TORCH_CHECK(key.has_value() == value.has_value() && key.has_value() == slot_mapping.has_value(),
              "paged_decode_attention: key, value and slot_mapping are given together");
  const at::Tensor q = query.contiguous();
  const at::Tensor tables = block_tables.to(at::kLong).contiguous();
  const at::Tensor lens = context_lens.to(at::kLong).contiguous();
  at::Tensor keys, values, slots;
  if (key.has_value()) {
    keys = rows_of(*key);
    values = rows_of(*value);
    slots = slot_mapping->to(at::kLong).contiguous();
    const auto row = k_cache.sizes().slice(2);
    TORCH_CHECK(keys.dim() == 3 && keys.sizes().slice(1) == row && values.sizes() == keys.sizes() &&
                    slots.numel() == keys.size(0) && keys.scalar_type() == k_cache.scalar_type() &&
                    values.scalar_type() == k_cache.scalar_type(),
                "paged_decode_attention: key and value [T, kv_heads, dim] in the caches' dtype, slot_mapping [T]");
    const int64_t capacity = k_cache.size(0) * k_cache.size(1);
    const int64_t* sp = slots.data_ptr<int64_t>();
    for (int64_t t = 0; t < slots.numel(); ++t)
      TORCH_CHECK(sp[t] >= 0 && sp[t] < capacity, "paged_decode_attention: slot ", sp[t], " outside the cache");
  }
  auto out = at::empty_like(q);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_decode_attention", [&] {
    if (key.has_value()) {
      write_rows<scalar_t>(keys, k_cache, slots.data_ptr<int64_t>());
      write_rows<scalar_t>(values, v_cache, slots.data_ptr<int64_t>());
    }
    decode<scalar_t>(q, k_cache, v_cache, tables, lens, out, static_cast<float>(scale), window);
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode_attention", &paged_decode_attention,
        "decode attention over a paged KV cache: query [B, heads, dim] -> [B, heads, dim]; key, value and "
        "slot_mapping, when given, written into the caches first",
        pybind11::arg("query"), pybind11::arg("k_cache"), pybind11::arg("v_cache"), pybind11::arg("block_tables"),
        pybind11::arg("context_lens"), pybind11::arg("scale"), pybind11::arg("window"),
        pybind11::arg("key") = pybind11::none(), pybind11::arg("value") = pybind11::none(),
        pybind11::arg("slot_mapping") = pybind11::none());
}
