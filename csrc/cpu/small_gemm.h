// A register-blocked GEMM for the small per-(batch, head) products of linear attention.
//
// The products are d x n by n x d or d x d by d x n (d = dim_head, 32 in the seed; n = H * W
// up to 784) and run thousands of times per forward, one per (b, h) task. Through
// at::mm_out each paid about 10 us of dispatch, more than its arithmetic; this runs inline
// on the calling thread. It keeps a block of output rows in vector registers (simd.h, one
// register per vector at the caller's level) and accumulates broadcast-times-row products, so
// every loaded vector feeds several FMAs and no horizontal sums are needed (a product
// contracting along rows, A B^T, is run on B transposed). Callers run it inside dispatch_isa.
//
// The streamed operand is "padded rows": each row holds padded_length(width) values, zero
// past the width, so the inner loop reads whole vectors only. Only the final store is ragged.
#pragma once
#include <cstdint>

#include "simd.h"

namespace ddpm_fast {

// Columns [j0, j0 + JV * lanes) of RB output rows, of which the final vector stores `last`
// lanes: out[i][j] = sum_k m[i * m_row + k * m_col] * a[k][j].
template <int Bytes, int RB, int JV, typename T>
DDPM_FAST_INLINE void row_block(const T* m, int64_t m_row, int64_t m_col, const T* a, int64_t lda, T* out,
                                int64_t ldo, int64_t k, int64_t j0, int last) {
  using V = typename Vec<T, Bytes>::V;
  constexpr int L = Vec<T, Bytes>::lanes;
  V acc[RB][JV] = {};
  for (int64_t kk = 0; kk < k; ++kk) {
    V av[JV];
    for (int v = 0; v < JV; ++v) av[v] = load_vec<T, Bytes>(a + kk * lda + j0 + v * L);
    for (int i = 0; i < RB; ++i) {
      const V w = V{} + m[i * m_row + kk * m_col];
      for (int v = 0; v < JV; ++v) acc[i][v] += w * av[v];
    }
  }
  for (int i = 0; i < RB; ++i)
    for (int v = 0; v < JV; ++v)
      store_vec<T, Bytes>(out + i * ldo + j0 + v * L, acc[i][v], v == JV - 1 ? last : L);
}

template <int Bytes, int RB, typename T>
DDPM_FAST_INLINE void output_rows(const T* m, int64_t m_row, int64_t m_col, const T* a, int64_t lda, T* out,
                                  int64_t ldo, int64_t k, int64_t n) {
  constexpr int L = Vec<T, Bytes>::lanes;
  int64_t j = 0;
  for (; j + 2 * L <= n; j += 2 * L) row_block<Bytes, RB, 2>(m, m_row, m_col, a, lda, out, ldo, k, j, L);
  for (; j < n; j += L)
    row_block<Bytes, RB, 1>(m, m_row, m_col, a, lda, out, ldo, k, j, static_cast<int>(n - j < L ? n - j : L));
}

// out (rows x n, row stride ldo) = M @ a, with a (k x n) as padded rows of stride lda and
// M (rows x k) read as M[i][kk] = m[i * m_row + kk * m_col]: (m_row, m_col) = (ldm, 1) for a
// row-major m, (1, ldm) for its transpose. Writes n columns of each output row. Bytes is the
// vector width of the caller's level, vector_bytes<I>.
template <int Bytes, typename T>
DDPM_FAST_INLINE void small_gemm(const T* m, int64_t m_row, int64_t m_col, const T* a, int64_t lda, T* out,
                                 int64_t ldo, int64_t rows, int64_t k, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4)
    output_rows<Bytes, 4>(m + i * m_row, m_row, m_col, a, lda, out + i * ldo, ldo, k, n);
  for (; i < rows; ++i) output_rows<Bytes, 1>(m + i * m_row, m_row, m_col, a, lda, out + i * ldo, ldo, k, n);
}

}  // namespace ddpm_fast
