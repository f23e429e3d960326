/* nf4/fp4 survival statistics and fake quantization of fp32 weights with AVX-512 register lookups.
 *
 * The compiled (torch.compile) kernels of _fused.py find a weight's 4-bit level by a chain of 15
 * compare-and-select steps per table, the fastest form inductor vectorises. Here the level index comes
 * from a four-step branchless binary search over the 15 midpoints and every table (level, half step) is
 * one 16-entry register permute (vpermps). The arithmetic is the compiled kernels', operation for
 * operation and in the same order (no FMA contraction: built with -ffp-contract=off), so codes and
 * deployed weights are bit-identical; the fp64 sums add the same fp32 products in another order.
 *
 * Built once per machine by _simd.py and loaded with ctypes; used only where the CPU has AVX-512F.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* The level of each scaled weight: how many of the ascending midpoints lie strictly below it (NaN: 0).
 * mids[c] holds midpoint c (1-based); mids[0] is never read as a candidate. */
static inline __m512i level_index(__m512 s, __m512 mids) {
    __m512i index = _mm512_setzero_si512();
    for (int step = 8; step >= 1; step >>= 1) {
        __m512i candidate = _mm512_add_epi32(index, _mm512_set1_epi32(step));
        __mmask16 above = _mm512_cmp_ps_mask(s, _mm512_permutexvar_ps(candidate, mids), _CMP_GT_OQ);
        index = _mm512_mask_mov_epi32(index, above, candidate);
    }
    return index;
}

/* 1 / absmax, the absmax floored as bitsandbytes floors it, broadcast. */
static inline __m512 inverse_scale(float absmax, float absmax_floor) {
    return _mm512_set1_ps(1.0f / (absmax > absmax_floor ? absmax : absmax_floor));
}

/* max |x| over a group (lanes of `len` floats, len % 16 == 0) and whether it holds a NaN. */
static inline float group_absmax(const float *x, int64_t len, int *nan) {
    __m512 best = _mm512_setzero_ps();
    __mmask16 unordered = 0;
    for (int64_t i = 0; i < len; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        unordered |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        best = _mm512_max_ps(best, _mm512_abs_ps(v));
    }
    *nan = unordered != 0;
    return _mm512_reduce_max_ps(best);
}

static inline __m512 fp16_round(__m512 v) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

static inline __m512d low_pd(__m512 v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
static inline __m512d high_pd(__m512 v) {
    return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

/* The six statistics, summed lane by lane: counts exactly, fp32 products in fp64. */
typedef struct {
    __m512d dot, delta_sq, qdelta_sq, residual_sq;
    int64_t changed, below;
} Sums;

static inline void sums_init(Sums *s) {
    s->dot = s->delta_sq = s->qdelta_sq = s->residual_sq = _mm512_setzero_pd();
    s->changed = s->below = 0;
}

/* 16 weights: codes (values) and deployed weights (q) of W0 and W1, the update d, W0's half step. */
static inline void sums_add(Sums *s, __m512 v0, __m512 v1, __m512 q0, __m512 q1, __m512 d, __m512 half0) {
    s->changed += __builtin_popcount(_mm512_cmp_ps_mask(v1, v0, _CMP_NEQ_UQ));
    s->below += __builtin_popcount(_mm512_cmp_ps_mask(_mm512_abs_ps(d), half0, _CMP_LT_OQ));
    const __m512 dq = _mm512_sub_ps(q1, q0);
    const __m512 residual = _mm512_sub_ps(dq, d);
    const __m512 p_dot = _mm512_mul_ps(dq, d), p_delta = _mm512_mul_ps(d, d);
    const __m512 p_q = _mm512_mul_ps(dq, dq), p_res = _mm512_mul_ps(residual, residual);
    s->dot = _mm512_add_pd(_mm512_add_pd(s->dot, low_pd(p_dot)), high_pd(p_dot));
    s->delta_sq = _mm512_add_pd(_mm512_add_pd(s->delta_sq, low_pd(p_delta)), high_pd(p_delta));
    s->qdelta_sq = _mm512_add_pd(_mm512_add_pd(s->qdelta_sq, low_pd(p_q)), high_pd(p_q));
    s->residual_sq = _mm512_add_pd(_mm512_add_pd(s->residual_sq, low_pd(p_res)), high_pd(p_res));
}

static inline void sums_store(const Sums *s, double *out) {
    out[0] = (double)s->changed;
    out[1] = (double)s->below;
    out[2] = _mm512_reduce_add_pd(s->dot);
    out[3] = _mm512_reduce_add_pd(s->delta_sq);
    out[4] = _mm512_reduce_add_pd(s->qdelta_sq);
    out[5] = _mm512_reduce_add_pd(s->residual_sq);
}

/* Weights in fp32 (kind 0), bf16 (1) or fp16 (2): loaded as fp32, and fp32 values rounded to the kind as
 * torch's casts round them (to nearest even; NaN stays NaN). */
static inline __m512 load_kind(const void *p, int kind, int64_t i) {
    if (kind == 0) return _mm512_loadu_ps((const float *)p + i);
    const __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i));
    if (kind == 1) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

static inline __m512 round_kind(__m512 v, int kind) {
    if (kind == 0) return v;
    if (kind == 2) return fp16_round(v);
    __m512i bits = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    bits = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
    const __m512 rounded = _mm512_castsi512_ps(_mm512_and_si512(bits, _mm512_set1_epi32((int)0xFFFF0000u)));
    return _mm512_mask_mov_ps(rounded, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), v);
}

/* Statistics of W0 -> W1 over n_groups groups of group_len weights, W0 of kind0 and `other` of kind1;
 * W1 = W0 + other rounded to kind0 when is_delta, else `other`. Each deployed weight Q(W) is rounded to
 * its weight's kind, as deployed in the model's dtype:
 * out[0..5] = changed codes, updates below half a step, <dQ,dW>, ||dW||^2, ||dQ||^2, ||dQ-dW||^2.
 * Returns the index of the first group with a non-finite absmax (W0's or W1's), or -1. */
int64_t bnb4_stats(const void *w0, int kind0, const void *other, int kind1, int is_delta, int64_t n_groups,
                   int64_t group_len, const float *midpoints16, const float *compare16, const float *half16,
                   float absmax_floor, double *out) {
    const __m512 mids = _mm512_loadu_ps(midpoints16);
    const __m512 compare = _mm512_loadu_ps(compare16);
    const __m512 half = _mm512_loadu_ps(half16);
    const int kind_w1 = is_delta ? kind0 : kind1;
    Sums sums;
    sums_init(&sums);
    float x0_group[group_len > 0 ? group_len : 1], x1_group[group_len > 0 ? group_len : 1];
    for (int64_t g = 0; g < n_groups; ++g) {
        const int64_t at = g * group_len;
        for (int64_t i = 0; i < group_len; i += 16) {
            const __m512 a = load_kind(w0, kind0, at + i), o = load_kind(other, kind1, at + i);
            _mm512_storeu_ps(x0_group + i, a);
            _mm512_storeu_ps(x1_group + i, is_delta ? round_kind(_mm512_add_ps(a, o), kind0) : o);
        }
        int nan0, nan1;
        const float absmax0 = group_absmax(x0_group, group_len, &nan0);
        const float absmax1 = group_absmax(x1_group, group_len, &nan1);
        if (nan0 || nan1 || absmax0 == __builtin_inff() || absmax1 == __builtin_inff()) return g;
        const __m512 scale0 = _mm512_set1_ps(absmax0), scale1 = _mm512_set1_ps(absmax1);
        const __m512 inv0 = inverse_scale(absmax0, absmax_floor);
        const __m512 inv1 = inverse_scale(absmax1, absmax_floor);
        for (int64_t i = 0; i < group_len; i += 16) {
            const __m512 a = _mm512_loadu_ps(x0_group + i), b = _mm512_loadu_ps(x1_group + i);
            const __m512i k0 = level_index(_mm512_mul_ps(a, inv0), mids);
            const __m512i k1 = level_index(_mm512_mul_ps(b, inv1), mids);
            const __m512 v0 = _mm512_permutexvar_ps(k0, compare), v1 = _mm512_permutexvar_ps(k1, compare);
            const __m512 half0 = _mm512_mul_ps(_mm512_permutexvar_ps(k0, half), scale0);
            const __m512 q0 = round_kind(_mm512_mul_ps(v0, scale0), kind0);
            const __m512 q1 = round_kind(_mm512_mul_ps(v1, scale1), kind_w1);
            sums_add(&sums, v0, v1, q0, q1, _mm512_sub_ps(b, a), half0);
        }
    }
    sums_store(&sums, out);
    return -1;
}

/* out = Q(W0 [+ delta]) decoded (levels16: the dequantization levels) over n_groups groups.
 * Returns the index of the first group with a non-finite absmax, or -1. */
int64_t bnb4_fake_f32(const float *w0, const float *delta, int64_t n_groups, int64_t group_len,
                      const float *midpoints16, const float *levels16, float absmax_floor, float *out) {
    const __m512 mids = _mm512_loadu_ps(midpoints16);
    const __m512 levels = _mm512_loadu_ps(levels16);
    for (int64_t g = 0; g < n_groups; ++g) {
        const float *x = w0 + g * group_len;
        float *y = out + g * group_len;
        if (delta) {  /* the merged weight, formed in the output */
            const float *d = delta + g * group_len;
            for (int64_t i = 0; i < group_len; i += 16)
                _mm512_storeu_ps(y + i, _mm512_add_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(d + i)));
            x = y;
        }
        int nan;
        const float absmax = group_absmax(x, group_len, &nan);
        if (nan || absmax == __builtin_inff()) return g;
        const __m512 scale = _mm512_set1_ps(absmax);
        const __m512 inv = inverse_scale(absmax, absmax_floor);
        for (int64_t i = 0; i < group_len; i += 16) {
            const __m512i k = level_index(_mm512_mul_ps(_mm512_loadu_ps(x + i), inv), mids);
            _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_permutexvar_ps(k, levels), scale));
        }
    }
    return -1;
}

/* ---- GGUF's legacy block formats: ggml's reference quantizer over blocks of 32 weights ----
 * kind 0: Q4_0/Q5_0 (the signed absmax, the first of +amax and -amax on ties, d = max / -offset),
 * kind 1: Q4_1/Q5_1 (d = (max - min) / qmax and the fp16 minimum), kind 2: Q8_0 (d = amax / 127,
 * roundf). As _fused._encode_legacy computes them: values are the codes less the offset, q = values*d
 * (+ min), d and min rounded to fp16. */
typedef struct {
    __m512 values[2], q[2];
    float half;
    int bad;
} Block32;

static inline float inverse(float d) { return d != 0.0f ? 1.0f / d : 0.0f; }

static inline void encode_legacy(const float *x, int kind, int offset, int qmax, Block32 *b) {
    const __m512 lo_v = _mm512_loadu_ps(x), hi_v = _mm512_loadu_ps(x + 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(lo_v, lo_v, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(hi_v, hi_v, _CMP_UNORD_Q);
    const __m512 vecs[2] = {lo_v, hi_v};
    __m512 scale, zero = _mm512_setzero_ps(), inv;
    float d;
    if (kind == 1) {
        const float lo = _mm512_reduce_min_ps(_mm512_min_ps(lo_v, hi_v));
        const float hi = _mm512_reduce_max_ps(_mm512_max_ps(lo_v, hi_v));
        b->bad = nan != 0 || lo == -__builtin_inff() || lo == __builtin_inff() || hi == __builtin_inff() ||
                 hi == -__builtin_inff();
        d = (hi - lo) / (float)qmax;
        inv = _mm512_set1_ps(inverse(d));
        const __m512 lo_b = _mm512_set1_ps(lo);
        zero = fp16_round(lo_b);
        for (int h = 0; h < 2; ++h) {
            __m512 c = _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(vecs[h], lo_b), inv), _mm512_set1_ps(0.5f));
            c = _mm512_roundscale_ps(c, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            b->values[h] = _mm512_min_ps(_mm512_max_ps(c, _mm512_setzero_ps()), _mm512_set1_ps((float)qmax));
        }
    } else {
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo_v), _mm512_abs_ps(hi_v)));
        b->bad = nan != 0 || amax == __builtin_inff();
        if (kind == 0) {
            const __m512 pos = _mm512_set1_ps(amax), neg = _mm512_set1_ps(-amax);
            const uint32_t at_pos = (uint32_t)_mm512_cmp_ps_mask(lo_v, pos, _CMP_EQ_OQ) |
                                    ((uint32_t)_mm512_cmp_ps_mask(hi_v, pos, _CMP_EQ_OQ) << 16);
            const uint32_t at_neg = (uint32_t)_mm512_cmp_ps_mask(lo_v, neg, _CMP_EQ_OQ) |
                                    ((uint32_t)_mm512_cmp_ps_mask(hi_v, neg, _CMP_EQ_OQ) << 16);
            const int first_pos = at_pos ? __builtin_ctz(at_pos) : 32;
            const int first_neg = at_neg ? __builtin_ctz(at_neg) : 32;
            const float picked = first_neg < first_pos ? -amax : amax;
            d = (amax > 0.0f ? picked : 0.0f) / (float)(-offset);
            inv = _mm512_set1_ps(inverse(d));
            for (int h = 0; h < 2; ++h) {
                __m512 c = _mm512_add_ps(_mm512_mul_ps(vecs[h], inv), _mm512_set1_ps((float)offset + 0.5f));
                c = _mm512_roundscale_ps(c, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
                c = _mm512_min_ps(_mm512_max_ps(c, _mm512_setzero_ps()), _mm512_set1_ps((float)(2 * offset - 1)));
                b->values[h] = _mm512_sub_ps(c, _mm512_set1_ps((float)offset));
            }
        } else {
            d = amax / 127.0f;
            inv = _mm512_set1_ps(inverse(d));
            for (int h = 0; h < 2; ++h) {
                const __m512 v = _mm512_mul_ps(vecs[h], inv);
                const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
                const __mmask16 away = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(v, t)), _mm512_set1_ps(0.5f), _CMP_GE_OQ);
                /* sign(v) where it moves t away from zero (|v - t| >= 0.5 implies v != 0) */
                const __mmask16 negative = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ);
                const __m512 one = _mm512_mask_blend_ps(negative, _mm512_set1_ps(1.0f), _mm512_set1_ps(-1.0f));
                const __m512 r = _mm512_mask_add_ps(t, away, t, one);
                b->values[h] = _mm512_add_ps(r, _mm512_setzero_ps());
            }
        }
    }
    scale = fp16_round(_mm512_set1_ps(d));
    for (int h = 0; h < 2; ++h) {
        const __m512 q = _mm512_mul_ps(b->values[h], scale);
        b->q[h] = kind == 1 ? _mm512_add_ps(q, zero) : q;
    }
    b->half = fabsf(_mm512_cvtss_f32(scale)) / 2.0f;
}

int64_t legacy_stats_f32(const float *w0, const float *other, int is_delta, int64_t n_groups, int kind, int offset,
                         int qmax, double *out) {
    Sums sums;
    sums_init(&sums);
    float merged[32];
    Block32 b0, b1;
    for (int64_t g = 0; g < n_groups; ++g) {
        const float *x0 = w0 + g * 32;
        const float *x1 = other + g * 32;
        if (is_delta) {
            for (int i = 0; i < 32; i += 16)
                _mm512_storeu_ps(merged + i, _mm512_add_ps(_mm512_loadu_ps(x0 + i), _mm512_loadu_ps(x1 + i)));
            x1 = merged;
        }
        encode_legacy(x0, kind, offset, qmax, &b0);
        encode_legacy(x1, kind, offset, qmax, &b1);
        if (b0.bad || b1.bad) return g;
        const __m512 half0 = _mm512_set1_ps(b0.half);
        for (int h = 0; h < 2; ++h) {
            const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x1 + 16 * h), _mm512_loadu_ps(x0 + 16 * h));
            sums_add(&sums, b0.values[h], b1.values[h], b0.q[h], b1.q[h], d, half0);
        }
    }
    sums_store(&sums, out);
    return -1;
}

int64_t legacy_fake_f32(const float *w0, const float *delta, int64_t n_groups, int kind, int offset, int qmax,
                        float *out) {
    float merged[32];
    Block32 b;
    for (int64_t g = 0; g < n_groups; ++g) {
        const float *x = w0 + g * 32;
        if (delta) {
            for (int i = 0; i < 32; i += 16)
                _mm512_storeu_ps(merged + i, _mm512_add_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(delta + g * 32 + i)));
            x = merged;
        }
        encode_legacy(x, kind, offset, qmax, &b);
        if (b.bad) return g;
        _mm512_storeu_ps(out + g * 32, b.q[0]);
        _mm512_storeu_ps(out + g * 32 + 16, b.q[1]);
    }
    return -1;
}

/* ---- LLM.int8's weight codes: one absmax per row of the fp16-rounded weight, round(x * 127 / absmax) ----
 * As _fused._encode computes them for the "llm_int8" family: q = code * absmax * inv127, half step
 * absmax * half_factor. Rows of any multiple of 16; W1 = W0 + other is formed twice (once per pass). */
static inline __m512 int8_row_input(const float *x0, const float *other, int is_delta, int64_t i, int which) {
    const __m512 a = _mm512_loadu_ps(x0 + i);
    if (which == 0) return a;
    const __m512 o = _mm512_loadu_ps(other + i);
    return is_delta ? _mm512_add_ps(a, o) : o;
}

int64_t int8_stats_f32(const float *w0, const float *other, int is_delta, int64_t n_groups, int64_t group_len,
                       float inv127, float half_factor, double *out) {
    Sums sums;
    sums_init(&sums);
    for (int64_t g = 0; g < n_groups; ++g) {
        const float *x0 = w0 + g * group_len, *o = other + g * group_len;
        __m512 max0 = _mm512_setzero_ps(), max1 = _mm512_setzero_ps();
        __mmask16 nan = 0;
        for (int64_t i = 0; i < group_len; i += 16) {
            const __m512 a = fp16_round(int8_row_input(x0, o, is_delta, i, 0));
            const __m512 b = fp16_round(int8_row_input(x0, o, is_delta, i, 1));
            nan |= _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(b, b, _CMP_UNORD_Q);
            max0 = _mm512_max_ps(max0, _mm512_abs_ps(a));
            max1 = _mm512_max_ps(max1, _mm512_abs_ps(b));
        }
        const float scale0 = _mm512_reduce_max_ps(max0), scale1 = _mm512_reduce_max_ps(max1);
        if (nan || scale0 == __builtin_inff() || scale1 == __builtin_inff()) return g;
        /* torch's `127.0 / scales` is `scales.reciprocal() * 127.0`: two roundings */
        const __m512 factor0 = _mm512_set1_ps(scale0 > 0.0f ? (1.0f / scale0) * 127.0f : 0.0f);
        const __m512 factor1 = _mm512_set1_ps(scale1 > 0.0f ? (1.0f / scale1) * 127.0f : 0.0f);
        const __m512 s0 = _mm512_set1_ps(scale0), s1 = _mm512_set1_ps(scale1), inv = _mm512_set1_ps(inv127);
        const __m512 half0 = _mm512_set1_ps(scale0 * half_factor);
        for (int64_t i = 0; i < group_len; i += 16) {
            const __m512 a = int8_row_input(x0, o, is_delta, i, 0), b = int8_row_input(x0, o, is_delta, i, 1);
            const __m512 v0 = _mm512_roundscale_ps(_mm512_mul_ps(fp16_round(a), factor0),
                                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            const __m512 v1 = _mm512_roundscale_ps(_mm512_mul_ps(fp16_round(b), factor1),
                                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            const __m512 q0 = _mm512_mul_ps(_mm512_mul_ps(v0, s0), inv);
            const __m512 q1 = _mm512_mul_ps(_mm512_mul_ps(v1, s1), inv);
            sums_add(&sums, v0, v1, q0, q1, _mm512_sub_ps(b, a), half0);
        }
    }
    sums_store(&sums, out);
    return -1;
}

/* ---- bitsandbytes' 4-bit decode (its CUDA dequantize_4bit) of whole blocks ----
 * level[code] * absmax[block] in fp32, two codes per byte, high nibble first; written as fp32 (out_kind 0),
 * bf16 (1: round to nearest even, as torch casts finite values) or fp16 (2), or rounded to bf16 (4) or
 * fp16 (5) and written as fp32. */
void bnb4_decode(const uint8_t *packed, const float *absmax, int64_t n_blocks, int64_t block_size,
                 const float *levels16, int out_kind, void *out) {
    const __m512 levels = _mm512_loadu_ps(levels16);
    const __m128i low_nibble = _mm_set1_epi16(15);
    for (int64_t b = 0; b < n_blocks; ++b) {
        const __m512 scale = _mm512_set1_ps(absmax[b]);
        const uint8_t *p = packed + b * (block_size / 2);
        for (int64_t i = 0; i < block_size; i += 16) {
            const __m128i bytes = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(p + i / 2)));
            const __m128i hi = _mm_srli_epi16(bytes, 4), lo = _mm_and_si128(bytes, low_nibble);
            const __m256i codes = _mm256_set_m128i(_mm_unpackhi_epi16(hi, lo), _mm_unpacklo_epi16(hi, lo));
            const __m512 v = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_cvtepu16_epi32(codes), levels), scale);
            const int64_t at = b * block_size + i;
            if (out_kind == 0) {
                _mm512_storeu_ps((float *)out + at, v);
            } else if (out_kind >= 3) {  /* rounded to bf16 (4) or fp16 (5), kept in fp32 */
                _mm512_storeu_ps((float *)out + at, round_kind(v, out_kind - 3));
            } else if (out_kind == 1) {
                __m512i bits = _mm512_castps_si512(v);
                const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
                bits = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
                _mm256_storeu_si256((__m256i *)((uint16_t *)out + at), _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
            } else {
                _mm256_storeu_si256((__m256i *)((uint16_t *)out + at),
                                    _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            }
        }
    }
}

/* ---- GGUF K-quants: ggml's reference quantizers (quantize_row_q{4,5,6}_K_ref, no importance matrix) ----
 *
 * Transcribed from ggml's src/ggml-quants.c (make_qkx2_quants, make_qx_quants, nearest_int) with the same
 * fp32 operations in the same order (no contraction), so codes and scales are ggml's bit for bit. The
 * searches run one sub-block per vector lane (8 of Q4_K/Q5_K's 32-weight sub-blocks in an AVX vector, 16 of
 * Q6_K's in an AVX-512 one): each lane performs the scalar code's operations on its sub-block, with masks
 * where the C code branches. fp16 conversions by F16C (round to nearest even), as GGML_FP32_TO_FP16
 * converts on x86. Output per super-block of 256: the codes as fp32, the fp16 scale(s) as fp32 values,
 * and the integer sub-block scales (and mins) as fp32 (KBlocks in gguf_kquants.py). */

#define K_QK 256

static inline int k_nearest_int(float fval) {
    float val = fval + 12582912.f;
    int i;
    memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

static inline float k_fp16(float x) { return _cvtsh_ss(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT)); }

/* nearest_int of 8 floats: the same bit trick, lane by lane. */
static inline __m256i k_nearest_int8(__m256 fval) {
    __m256i i = _mm256_castps_si256(_mm256_add_ps(fval, _mm256_set1_ps(12582912.f)));
    return _mm256_sub_epi32(_mm256_and_si256(i, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x00400000));
}

static inline __m256i k_clamp8(__m256i l, int nmax) {
    return _mm256_min_epi32(_mm256_max_epi32(l, _mm256_setzero_si256()), _mm256_set1_epi32(nmax));
}

/* The 8 sub-blocks of one Q4_K/Q5_K super-block at once, one per AVX lane: make_qkx2_quants with its
 * weights (sqrt(mean x^2) + |x|), each lane running the scalar code's fp32 operations in the scalar code's
 * order (minps/maxps are `x < m ? x : m` / `x > m ? x : m`, the C comparisons; no contraction), so every
 * lane's scale, minimum and codes are those of ggml's make_qkx2_quants on its sub-block. */
static void k_make_qkx2_quants_x8(int nmax, const float *x, uint8_t *L, float *scales, float *mins, float rmin,
                                  float rdelta, int nstep) {
    const __m256i lanes = _mm256_setr_epi32(0, 32, 64, 96, 128, 160, 192, 224);
    __m256 xv[32], wv[32];
    __m256i lv[32], aux[32];
    __m256 sum_x2 = _mm256_setzero_ps();
    for (int i = 0; i < 32; ++i) {
        xv[i] = _mm256_i32gather_ps(x + i, lanes, 4);
        sum_x2 = _mm256_add_ps(sum_x2, _mm256_mul_ps(xv[i], xv[i]));
    }
    const __m256 av_x = _mm256_sqrt_ps(_mm256_div_ps(sum_x2, _mm256_set1_ps(32.f)));
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int i = 0; i < 32; ++i) wv[i] = _mm256_add_ps(av_x, _mm256_andnot_ps(sign, xv[i]));

    __m256 min = xv[0], max = xv[0], sum_w = wv[0];
    __m256 sum_x = _mm256_mul_ps(sum_w, xv[0]);
    for (int i = 1; i < 32; ++i) {
        min = _mm256_min_ps(xv[i], min);
        max = _mm256_max_ps(xv[i], max);
        sum_w = _mm256_add_ps(sum_w, wv[i]);
        sum_x = _mm256_add_ps(sum_x, _mm256_mul_ps(wv[i], xv[i]));
    }
    const __m256 zero = _mm256_setzero_ps();
    min = _mm256_blendv_ps(min, zero, _mm256_cmp_ps(min, zero, _CMP_GT_OQ));
    const __m256 flat = _mm256_cmp_ps(max, min, _CMP_EQ_OQ);
    const __m256 min0 = min;

    __m256 iscale = _mm256_div_ps(_mm256_set1_ps((float)nmax), _mm256_sub_ps(max, min));
    __m256 scale = _mm256_div_ps(_mm256_set1_ps(1.f), iscale);
    __m256 best_error = zero;
    for (int i = 0; i < 32; ++i) {
        lv[i] = k_clamp8(k_nearest_int8(_mm256_mul_ps(iscale, _mm256_sub_ps(xv[i], min))), nmax);
        __m256 diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale, _mm256_cvtepi32_ps(lv[i])), min), xv[i]);
        best_error = _mm256_add_ps(best_error, _mm256_mul_ps(wv[i], _mm256_mul_ps(diff, diff)));
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = _mm256_div_ps(_mm256_set1_ps(rmin + rdelta * is + nmax), _mm256_sub_ps(max, min));
        __m256 sum_l = zero, sum_l2 = zero, sum_xl = zero;
        for (int i = 0; i < 32; ++i) {
            aux[i] = k_clamp8(k_nearest_int8(_mm256_mul_ps(iscale, _mm256_sub_ps(xv[i], min))), nmax);
            __m256 l = _mm256_cvtepi32_ps(aux[i]);
            __m256 wl = _mm256_mul_ps(wv[i], l);
            sum_l = _mm256_add_ps(sum_l, wl);
            sum_l2 = _mm256_add_ps(sum_l2, _mm256_mul_ps(wl, l));
            sum_xl = _mm256_add_ps(sum_xl, _mm256_mul_ps(wl, xv[i]));
        }
        __m256 D = _mm256_sub_ps(_mm256_mul_ps(sum_w, sum_l2), _mm256_mul_ps(sum_l, sum_l));
        __m256 ok = _mm256_cmp_ps(D, zero, _CMP_GT_OQ);
        if (_mm256_movemask_ps(ok) == 0) continue;
        __m256 this_scale = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_w, sum_xl), _mm256_mul_ps(sum_x, sum_l)), D);
        __m256 this_min = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_l2, sum_x), _mm256_mul_ps(sum_l, sum_xl)), D);
        __m256 positive = _mm256_cmp_ps(this_min, zero, _CMP_GT_OQ);
        this_min = _mm256_blendv_ps(this_min, zero, positive);
        this_scale = _mm256_blendv_ps(this_scale, _mm256_div_ps(sum_xl, sum_l2), positive);
        __m256 cur_error = zero;
        for (int i = 0; i < 32; ++i) {
            __m256 diff = _mm256_sub_ps(
                _mm256_add_ps(_mm256_mul_ps(this_scale, _mm256_cvtepi32_ps(aux[i])), this_min), xv[i]);
            cur_error = _mm256_add_ps(cur_error, _mm256_mul_ps(wv[i], _mm256_mul_ps(diff, diff)));
        }
        __m256 better = _mm256_and_ps(ok, _mm256_cmp_ps(cur_error, best_error, _CMP_LT_OQ));
        __m256i take = _mm256_castps_si256(better);
        for (int i = 0; i < 32; ++i) lv[i] = _mm256_blendv_epi8(lv[i], aux[i], take);
        best_error = _mm256_blendv_ps(best_error, cur_error, better);
        scale = _mm256_blendv_ps(scale, this_scale, better);
        min = _mm256_blendv_ps(min, this_min, better);
    }
    /* A constant sub-block returns before any search: codes 0, scale 0, the clamped minimum. */
    scale = _mm256_blendv_ps(scale, zero, flat);
    min = _mm256_blendv_ps(min, min0, flat);
    __m256i flat_i = _mm256_castps_si256(flat);
    float scale_out[8], min_out[8];
    _mm256_storeu_ps(scale_out, scale);
    _mm256_storeu_ps(min_out, min);
    for (int j = 0; j < 8; ++j) {
        scales[j] = scale_out[j];
        mins[j] = -min_out[j];
    }
    for (int i = 0; i < 32; ++i) {
        int32_t codes[8];
        _mm256_storeu_si256((__m256i *)codes, _mm256_andnot_si256(flat_i, lv[i]));
        for (int j = 0; j < 8; ++j) L[32 * j + i] = (uint8_t)codes[j];
    }
}

/* Q4_K (nmax 15, rmin -1, nstep 20) and Q5_K (nmax 31, rmin -0.5, nstep 15) over nb super-blocks. */
void kquant_q45_f32(const float *x, int64_t nb, int nmax, float rmin, int nstep, float *codes, float *d_out,
                    float *dmin_out, float *sc_out, float *m_out) {
    uint8_t L[K_QK];
    float mins[K_QK / 32], scales[K_QK / 32];
    for (int64_t i = 0; i < nb; i++, x += K_QK) {
        float max_scale = 0, max_min = 0;
        k_make_qkx2_quants_x8(nmax, x, L, scales, mins, rmin, 0.1f, nstep);
        for (int j = 0; j < K_QK / 32; ++j) {
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
        float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
        float d = k_fp16(max_scale / 63.f), dmin = k_fp16(max_min / 63.f);
        d_out[i] = d;
        dmin_out[i] = dmin;
        for (int j = 0; j < K_QK / 32; ++j) {
            uint8_t ls = (uint8_t)k_nearest_int(inv_scale * scales[j]);
            uint8_t lm = (uint8_t)k_nearest_int(inv_min * mins[j]);
            ls = ls < 63 ? ls : 63;
            lm = lm < 63 ? lm : 63;
            sc_out[i * 8 + j] = ls;
            m_out[i * 8 + j] = lm;
            const float dj = d * ls;
            if (dj) {
                const float dm = dmin * lm;
                for (int ii = 0; ii < 32; ++ii) {
                    int l = k_nearest_int((x[32 * j + ii] + dm) / dj);
                    L[32 * j + ii] = l < 0 ? 0 : (l > nmax ? nmax : l);
                }
            }
        }
        for (int l = 0; l < K_QK; ++l) codes[i * K_QK + l] = L[l];
    }
}

/* One trial grid of make_qx_quants in 16 lanes: levels clamp(nearest_int(iscale * x), -nmax, nmax - 1) and
 * the sums Σ (w·x)·l and Σ (w·l)·l, added in the scalar loop's order. */
static inline void k_trial16(__m512 iscale, const __m512 *xv, const __m512 *wv, const __m512 *wxv, int nmax,
                             __m512i *levels, __m512 *sumlx, __m512 *suml2) {
    const __m512i lo = _mm512_set1_epi32(-nmax), hi = _mm512_set1_epi32(nmax - 1);
    __m512 lx = _mm512_setzero_ps(), l2 = _mm512_setzero_ps();
    for (int i = 0; i < 16; ++i) {
        __m512i l = _mm512_castps_si512(_mm512_add_ps(_mm512_mul_ps(iscale, xv[i]), _mm512_set1_ps(12582912.f)));
        l = _mm512_sub_epi32(_mm512_and_si512(l, _mm512_set1_epi32(0x007fffff)), _mm512_set1_epi32(0x00400000));
        levels[i] = _mm512_min_epi32(_mm512_max_epi32(l, lo), hi);
        __m512 lf = _mm512_cvtepi32_ps(levels[i]);
        lx = _mm512_add_ps(lx, _mm512_mul_ps(wxv[i], lf));
        l2 = _mm512_add_ps(l2, _mm512_mul_ps(_mm512_mul_ps(wv[i], lf), lf));
    }
    *sumlx = lx;
    *suml2 = l2;
}

/* The 16 sub-blocks of one Q6_K super-block at once, one per AVX-512 lane: make_qx_quants(16, nmax, x, L,
 * rmse_type 1, no importance), each lane with the scalar code's fp32 operations in its order. */
static void k_make_qx_quants_x16(int nmax, const float *x, int8_t *L, float *scales) {
    const __m512i lanes = _mm512_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240);
    const __m512 zero = _mm512_setzero_ps();
    __m512 xv[16], wv[16], wxv[16];
    __m512i lv[16];
    __m512 max = zero, amax = zero;
    for (int i = 0; i < 16; ++i) {
        xv[i] = _mm512_i32gather_ps(lanes, x + i, 4);
        __m512 ax = _mm512_abs_ps(xv[i]);
        __mmask16 above = _mm512_cmp_ps_mask(ax, amax, _CMP_GT_OQ);
        amax = _mm512_mask_blend_ps(above, amax, ax);
        max = _mm512_mask_blend_ps(above, max, xv[i]);
        wv[i] = _mm512_mul_ps(xv[i], xv[i]);
        wxv[i] = _mm512_mul_ps(wv[i], xv[i]);
    }
    const __mmask16 zero_block = _mm512_cmp_ps_mask(amax, _mm512_set1_ps(1e-15f), _CMP_LT_OQ);
    __m512 iscale = _mm512_div_ps(_mm512_set1_ps((float)-nmax), max);
    __m512 sumlx, suml2;
    k_trial16(iscale, xv, wv, wxv, nmax, lv, &sumlx, &suml2);
    __mmask16 nonzero = _mm512_cmp_ps_mask(suml2, zero, _CMP_NEQ_UQ);
    __m512 scale = _mm512_mask_blend_ps(nonzero, zero, _mm512_div_ps(sumlx, suml2));
    __m512 best = _mm512_mul_ps(scale, sumlx);
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = _mm512_div_ps(_mm512_set1_ps(-(nmax + 0.1f * is)), max);
        __m512i cand[16];
        k_trial16(iscale, xv, wv, wxv, nmax, cand, &sumlx, &suml2);
        __mmask16 better = _mm512_cmp_ps_mask(suml2, zero, _CMP_GT_OQ)
                         & _mm512_cmp_ps_mask(_mm512_mul_ps(sumlx, sumlx), _mm512_mul_ps(best, suml2), _CMP_GT_OQ);
        if (!better) continue;
        for (int i = 0; i < 16; ++i) lv[i] = _mm512_mask_blend_epi32(better, lv[i], cand[i]);
        scale = _mm512_mask_blend_ps(better, scale, _mm512_div_ps(sumlx, suml2));
        best = _mm512_mask_blend_ps(better, best, _mm512_mul_ps(scale, sumlx));
    }
    /* An all-zero sub-block: codes 0, scale 0. */
    scale = _mm512_mask_blend_ps(zero_block, scale, zero);
    _mm512_storeu_ps(scales, scale);
    for (int i = 0; i < 16; ++i) {
        int32_t codes[16];
        __m512i stored = _mm512_mask_blend_epi32(zero_block, _mm512_add_epi32(lv[i], _mm512_set1_epi32(nmax)),
                                                 _mm512_setzero_si512());
        _mm512_storeu_si512(codes, stored);
        for (int j = 0; j < 16; ++j) L[16 * j + i] = (int8_t)codes[j];
    }
}

/* Q6_K over nb super-blocks: 16 sub-blocks of 16, int8 scales. */
void kquant_q6_f32(const float *x, int64_t nb, float *codes, float *d_out, float *sc_out) {
    int8_t L[K_QK];
    float scales[K_QK / 16];
    for (int64_t i = 0; i < nb; i++, x += K_QK) {
        float max_scale = 0, max_abs_scale = 0;
        k_make_qx_quants_x16(32, x, L, scales);
        for (int ib = 0; ib < K_QK / 16; ++ib) {
            const float scale = scales[ib];
            const float abs_scale = fabsf(scale);
            if (abs_scale > max_abs_scale) {
                max_abs_scale = abs_scale;
                max_scale = scale;
            }
        }
        if (max_abs_scale < 1e-15f) {  /* written as zero bytes */
            d_out[i] = 0.f;
            for (int ib = 0; ib < K_QK / 16; ++ib) sc_out[i * 16 + ib] = 0.f;
            for (int l = 0; l < K_QK; ++l) codes[i * K_QK + l] = 0.f;
            continue;
        }
        float iscale = -128.f / max_scale;
        const float d = k_fp16(1 / iscale);
        d_out[i] = d;
        for (int ib = 0; ib < K_QK / 16; ++ib) {
            int s = k_nearest_int(iscale * scales[ib]);
            int8_t sc = (int8_t)(s < 127 ? s : 127);
            sc_out[i * 16 + ib] = sc;
            const float dj = d * sc;
            if (!dj) continue;
            for (int ii = 0; ii < 16; ++ii) {
                int l = k_nearest_int(x[16 * ib + ii] / dj);
                l = l < -32 ? -32 : (l > 31 ? 31 : l);
                L[16 * ib + ii] = l + 32;
            }
        }
        for (int l = 0; l < K_QK; ++l) codes[i * K_QK + l] = L[l];
    }
}
