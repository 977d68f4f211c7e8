/* tvm-patch micro-kernels: the C functions the exported kernels call for their hot inner parts.
 *
 * tvmp_requant: TFLite's requantization of an int32 accumulator (multiply by a Q31 multiplier with a left
 *   shift, saturating rounding doubling high multiply, rounding right shift), bit for bit the expression
 *   LowerToInteger builds in TIR, in 32-bit operations plus one 32x32->64 multiply-accumulate (SMLAL).
 * tvmp_requant_rs: the same where every shift is <= 0 (an export-time fact): no left shift.
 * tvmp_requant_rs_narrow: the same where also |acc| < 2^30 (an export-time bound): one SMMULR on 2 acc
 *   (tvmp_srdhm_narrow).
 * tvmp_requant_rb: the same where also every shift is <= -1 and every multiplier >= 0 (export-time facts from the
 *   constants): one SMMLAR (tvmp_srdhm_add) with the rounding addend instead of mask and compare.
 * tvmp_requant_rbz: tvmp_requant_rb plus the output zero point, folded into its rounding addend (export-time bounds).
 * tvmp_requant_rbzr: tvmp_requant_rbz on the right shift (-shift) the export stores per channel
 *   (export/packed_constants.py).
 * tvmp_sum_s8: the sum of an int8 vector (a padded convolution tap: pad value x the sum of its weights);
 *   tvmp_pad_rows the same for several weight rows at once (a blocked border tap); tvmp_pad_rows_w on widened weights;
 *   tvmp_pad_sums the same from a table of those sums the export stores in Flash (codegen/weight_sums.py).
 * tvmp_sat_s8: the int8 clamp of an epilogue (one SSAT on Cortex-M4/M7).
 * tvmp_barrier: a compiler memory barrier (no instruction) between the patch stage's layers.
 * tvmp_window_s8: one convolution window (a depthwise output's taps) with its border bounds: an interior
 *   window runs without tests, unrolled; tvmp_window2_s8 / tvmp_window4_s8: two / four neighbouring interior
 *   windows of a row, their shared taps and weights loaded once; tvmp_window4_s8w (7 wide) and tvmp_window2_s8w (5 and
 *   7 wide) the same on weights widened in Flash;
 *   tvmp_window3_s8: three (a row of three 7-wide stride-2 windows).
 * tvmp_dot_s8: the int8 dot product of two contiguous vectors added to an accumulator; on cores with the DSP
 *   extension (Cortex-M4/M7) four multiply-accumulates take two word loads, four SXTB16 and two SMLAD
 *   (unrolled to eight per iteration).
 * tvmp_dot_s8_rows2 / _rows4: one activation vector against two or four weight rows (``ws`` bytes apart),
 *   added to acc[0..1] / acc[0..3]: each activation word is loaded and sign-extended once for all rows
 *   (register blocking of a 1x1 convolution or a dense layer over its output channels).
 * tvmp_dot_s8_px2_rows2 / _rows4: two activation vectors (two output pixels, ``as`` bytes apart) against two
 *   or four weight rows, added to acc[p * rows + j]: weight words are loaded and extended once per pixel pair.
 *
 * tvmp_widen_px2 / tvmp_dot_q15_px2_rows2 / _rows4: the same two-pixel product in two steps, where one pixel pair
 *   meets every output-channel block of a layer: the pair's activations sign-extended once into n words
 *   (tvmp_widen_px2, before the channel loop), then each block reads them (four word loads per four channels, no SXTB16).
 * tvmp_dot_q15_px4_rows2 / _rows4: two such pairs (four pixels) against int8 weight rows, each weight word loaded
 *   and sign-extended once for the four (codegen/four_pixels.py: a 2 x 2 layer whose weights stay int8).
 * tvmp_widen_px1 / tvmp_dot_q15_rows2 / _rows4: the same for one pixel and the rows kernels (round 17: one
 *   pixel's channels meet every output-channel block of an in-place or odd-width 1x1 convolution).
 * tvmp_widen_px2_planes: the same words from a pair stored as channel planes (NCHW: channel c of pixel p at
 *   a[c * cs + p]), so an NCHW kernel widens its pair straight from its input, without a pixel-major copy first.
 * tvmp_dot_s8w_rows* / tvmp_dot_s8w_px2_rows* / tvmp_dot_q15w_rows* / tvmp_dot_q15w_px2_rows*: the same on weights the export
 *   stored widened to int16 in Flash (codegen/wide_weights.py): no SXTB16 on weights, two words a load.
 * tvmp_row_q15w_px2: one output channel of a low-K 1x1 convolution along a row of widened pixel pairs, its epilogue
 *   (requantization, clamp, store) fused, the channel's constants and short weight rows in registers
 *   (codegen/channel_rows.py).
 * tvmp_copy_s8 / tvmp_fill_s8: a run of int8 copied or set (pad values) a word at a time (codegen/copy_kernels.py).
 * tvmp_quant_s8: a float input's quantization to int8 after its division by the scale; tvmp_quant_row_s8: a row of them
 *   four a step (codegen/quantize_kernels.py).
 *
 * Plain C99 elsewhere (the host build uses the same functions), so every target computes the same bits.
 */
#ifndef TVMP_KERNELS_H
#define TVMP_KERNELS_H
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__)
#define TVMP_INLINE static inline __attribute__((always_inline))
#define TVMP_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define TVMP_INLINE static inline
#define TVMP_UNLIKELY(x) (x)
#endif

#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#endif

/* TFLite's RoundingDivideByPOT(v, right), v's sign taken from hi (the same as v's): v >> right, plus one when the
   remainder v & mask exceeds the threshold (mask >> 1) + (v < 0). The test as the sign bit of threshold - remainder
   (both in [0, 2^31): the difference fits): SUB and an ADD with a shifted operand instead of CMP, IT, ADDGT. */
TVMP_INLINE int32_t tvmp_round_shift(int32_t v, int32_t right, int32_t hi) {
    int32_t mask = (int32_t)((1u << right) - 1u);
    int32_t t = ((mask >> 1) + (int32_t)((uint32_t)hi >> 31)) - (v & mask);
    return (v >> right) + (int32_t)((uint32_t)t >> 31);
}

TVMP_INLINE int32_t tvmp_requant(int32_t acc, int32_t mult, int32_t shift) {
    int32_t left = shift > 0 ? shift : 0; /* branch-free: the common case (shift <= 0) takes no jump */
    int32_t right = left - shift;
    int32_t x = (int32_t)((uint32_t)acc << left); /* wraps to 32 bits, as x * 2^shift in TFLite's int32 */
    int64_t p = (int64_t)x * mult + ((int64_t)1 << 30);
    int32_t hi = (int32_t)((uint64_t)p >> 32);
#if defined(__ARM_FEATURE_DSP)
    /* p >> 31 as 2 * hi (saturating: QADD) | bit 31 of the low word. |hi| < 2^30 for every product but
       INT32_MIN * INT32_MIN (hi = 2^30), where QADD gives INT32_MAX, TFLite's answer: no test, no branch. */
    int32_t v = (int32_t)((uint32_t)__qadd(hi, hi) | ((uint32_t)p >> 31));
#else
    int32_t v = (int32_t)(((uint32_t)hi << 1) | ((uint32_t)p >> 31)); /* p >> 31, which fits 32 bits ... */
    if (TVMP_UNLIKELY(x == INT32_MIN) && mult == INT32_MIN) v = INT32_MAX; /* ... but for this one product */
#endif
    return tvmp_round_shift(v, right, hi);
}

/* tvmp_requant for a shift known (at export time, from the constants of every call) to be <= 0: no left shift. */
TVMP_INLINE int32_t tvmp_requant_rs(int32_t acc, int32_t mult, int32_t shift) {
    int32_t right = -shift;
    int64_t p = (int64_t)acc * mult + ((int64_t)1 << 30);
    int32_t hi = (int32_t)((uint64_t)p >> 32);
#if defined(__ARM_FEATURE_DSP)
    int32_t v = (int32_t)((uint32_t)__qadd(hi, hi) | ((uint32_t)p >> 31)); /* as in tvmp_requant */
#else
    int32_t v = (int32_t)(((uint32_t)hi << 1) | ((uint32_t)p >> 31));
    if (TVMP_UNLIKELY(acc == INT32_MIN) && mult == INT32_MIN) v = INT32_MAX;
#endif
    return tvmp_round_shift(v, right, hi);
}

/* SRDHM(acc, mult) for an accumulator proven (at export time) below 2^30 in magnitude: floor((acc * mult + 2^30)
   / 2^31) = floor((2 acc * mult + 2^31) / 2^32), one SMMULR on 2 acc (which fits), and no saturation case (acc is
   not INT32_MIN). The two requantizations below share it. */
TVMP_INLINE int32_t tvmp_srdhm_narrow(int32_t acc, int32_t mult) {
#if defined(__ARM_FEATURE_DSP)
    int32_t v;
    __asm__("smmulr %0, %1, %2" : "=r"(v) : "r"((int32_t)((uint32_t)acc << 1)), "r"(mult));
    return v;
#else
    return (int32_t)(((int64_t)acc * mult + ((int64_t)1 << 30)) >> 31);
#endif
}

/* tvmp_requant_rs for an accumulator proven below 2^30 in magnitude. */
TVMP_INLINE int32_t tvmp_requant_rs_narrow(int32_t acc, int32_t mult, int32_t shift) {
    int32_t v = tvmp_srdhm_narrow(acc, mult);
    return tvmp_round_shift(v, -shift, v);
}

/* No instruction: GCC keeps no memory value in a register across it (the patch stage puts one between its layers'
   loop nests, so that one layer's values do not stay live, spilled, through the next's). */
TVMP_INLINE void tvmp_barrier(void) {
#if defined(__GNUC__)
    __asm__ volatile("" ::: "memory");
#endif
}

/* tvmp_srdhm_narrow(acc, mult) + add in one SMMLAR (the addend as its accumulator: add + the rounded high word). */
TVMP_INLINE int32_t tvmp_srdhm_add(int32_t acc, int32_t mult, int32_t add) {
#if defined(__ARM_FEATURE_DSP)
    int32_t v;
    __asm__("smmlar %0, %1, %2, %3" : "=r"(v) : "r"((int32_t)((uint32_t)acc << 1)), "r"(mult), "r"(add));
    return v;
#else
    return tvmp_srdhm_narrow(acc, mult) + add;
#endif
}

/* tvmp_requant_rs for |acc| <= 2^30 - 1, 1 <= -shift <= 31 and mult >= 0 (the caller proves all three from its
   constants): then |v| <= |acc| (|mult| < 2^31; INT32_MIN x INT32_MIN, the one saturating product, cannot occur) and
   v + 2^(right-1) cannot overflow, so TFLite's rounding divide by 2^right (half away from zero) is
   (v + half - (v < 0)) >> right; SMMLAR adds the half (kernels round 19: one instruction an output fewer). With
   mult >= 0, v < 0 only where acc < 0, and where acc < 0 but v = 0, half - 1 and half give the same quotient
   (0 <= half - 1 < 2^right): so the sign is taken from acc, which needs no v. */
TVMP_INLINE int32_t tvmp_requant_add_floor(int32_t acc, int32_t mult, int32_t add, int32_t right) {
    return (tvmp_srdhm_add(acc, mult, add) - (int32_t)((uint32_t)acc >> 31)) >> right;
}

/* tvmp_requant_rs under the three conditions above: the rounding half alone as the addend. */
TVMP_INLINE int32_t tvmp_requant_rb(int32_t acc, int32_t mult, int32_t shift) {
    int32_t right = -shift;
    return tvmp_requant_add_floor(acc, mult, (int32_t)((1u << right) >> 1), right);
}

/* tvmp_requant_rb(acc, mult, -right) + zp (the output zero point) for a caller that also proves |acc| + 1 +
   |zp| 2^right + 2^(right - 1) + 1 <= 2^31 - 1 (so does the addend below): adding zp 2^right before the floor shift is
   adding zp after it, and zp 2^right + 2^(right - 1) = ((2 zp + 1) << right) >> 1 takes one shift per channel, as
   the half alone did: one instruction fewer per output. The sign from acc as in tvmp_requant_rb (mult >= 0): the
   quotients of add and add - 1 agree, add = zp 2^right + half. */
TVMP_INLINE int32_t tvmp_rbzr_add(int32_t right, int32_t zp) {  /* the addend: (zp + 1/2) 2^right */
    return (int32_t)((uint32_t)(2 * zp + 1) << right) >> 1;
}

TVMP_INLINE int32_t tvmp_requant_rbzr(int32_t acc, int32_t mult, int32_t right, int32_t zp) {
    return tvmp_requant_add_floor(acc, mult, tvmp_rbzr_add(right, zp), right);
}

/* tvmp_requant_rbzr(acc, mult, right, zp) given acc2 = 2 acc (a kernel whose weights and bias it doubled; the
   caller's narrow bound |acc| < 2^30 keeps 2 acc in int32): the same SMMLAR operand without the shift that makes it,
   the sign from acc2 (acc's). One instruction fewer an output (kernels round 38). */
TVMP_INLINE int32_t tvmp_requant_rbzr2(int32_t acc2, int32_t mult, int32_t right, int32_t zp) {
    int32_t add = tvmp_rbzr_add(right, zp);
#if defined(__ARM_FEATURE_DSP)
    int32_t v;
    __asm__("smmlar %0, %1, %2, %3" : "=r"(v) : "r"(acc2), "r"(mult), "r"(add));
    return (v - (int32_t)((uint32_t)acc2 >> 31)) >> right;
#else
    return tvmp_requant_add_floor(acc2 / 2, mult, add, right);
#endif
}

/* tvmp_requant_rbzr on the shift (-right), where the export keeps the shift. */
TVMP_INLINE int32_t tvmp_requant_rbz(int32_t acc, int32_t mult, int32_t shift, int32_t zp) {
    return tvmp_requant_rbzr(acc, mult, -shift, zp);
}

#if defined(__ARM_FEATURE_DSP)
/* SXTB16 with its rotate: GCC 12 does not fold a rotate into __sxtb16, so say it. */
TVMP_INLINE uint32_t tvmp_sxtb16_ror8(uint32_t x) {
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}

/* PKHBT (ACLE has no intrinsic): the low halves of a and b as one word. */
TVMP_INLINE uint32_t tvmp_pack_lo_lo(uint32_t a, uint32_t b) { /* (a.lo, b.lo) */
    uint32_t r;
    __asm__("pkhbt %0, %1, %2, lsl #16" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

TVMP_INLINE int32_t tvmp_dot4(uint32_t x, uint32_t y, int32_t acc) {
    acc = __smlad(__sxtb16(x), __sxtb16(y), acc);                     /* bytes 0, 2 */
    return __smlad(tvmp_sxtb16_ror8(x), tvmp_sxtb16_ror8(y), acc);    /* bytes 1, 3 */
}

TVMP_INLINE int32_t tvmp_dot_s8(const int8_t *a, const int8_t *b, int32_t n, int32_t acc) {
    for (; n >= 8; n -= 8, a += 8, b += 8) {
        uint32_t x0, y0, x1, y1;
        memcpy(&x0, a, 4); /* LDR: unaligned word loads are allowed on Cortex-M4/M7 */
        memcpy(&y0, b, 4);
        memcpy(&x1, a + 4, 4);
        memcpy(&y1, b + 4, 4);
        acc = tvmp_dot4(x1, y1, tvmp_dot4(x0, y0, acc));
    }
    if (n >= 4) {
        uint32_t x, y;
        memcpy(&x, a, 4);
        memcpy(&y, b, 4);
        acc = tvmp_dot4(x, y, acc);
        a += 4, b += 4, n -= 4;
    }
    for (; n > 0; n--) acc += (int32_t)*a++ * (int32_t)*b++;
    return acc;
}

/* Rows of weights against one activation vector: the activation's two SXTB16 are shared by the rows. */
#define TVMP_ROW_STEP_AT(j, off) do { uint32_t y; memcpy(&y, w + (j) * ws + (off), 4); \
        s[j] = __smlad(xo, tvmp_sxtb16_ror8(y), __smlad(xe, __sxtb16(y), s[j])); } while (0)
#define TVMP_ROW_STEP(j) TVMP_ROW_STEP_AT(j, 0)
#define TVMP_ROWS_KERNEL(name, rows)                                                            \
TVMP_INLINE void name(const int8_t *a, const int8_t *w, int32_t ws, int32_t n, int32_t *acc) {  \
    int32_t s[rows];                                                                            \
    for (int32_t j = 0; j < rows; j++) s[j] = acc[j];                                           \
    for (; n >= 8; n -= 8, a += 8, w += 8) { /* two words per iteration: less loop overhead */  \
        uint32_t x;                                                                             \
        memcpy(&x, a, 4);                                                                       \
        uint32_t xe = __sxtb16(x), xo = tvmp_sxtb16_ror8(x);                                    \
        for (int32_t j = 0; j < rows; j++) TVMP_ROW_STEP(j);                                    \
        memcpy(&x, a + 4, 4);                                                                   \
        xe = __sxtb16(x), xo = tvmp_sxtb16_ror8(x);                                             \
        for (int32_t j = 0; j < rows; j++) TVMP_ROW_STEP_AT(j, 4);                              \
    }                                                                                           \
    if (n >= 4) {                                                                               \
        uint32_t x;                                                                             \
        memcpy(&x, a, 4);                                                                       \
        uint32_t xe = __sxtb16(x), xo = tvmp_sxtb16_ror8(x);                                    \
        for (int32_t j = 0; j < rows; j++) TVMP_ROW_STEP(j);                                    \
        n -= 4, a += 4, w += 4;                                                                 \
    }                                                                                           \
    for (; n > 0; n--, a++, w++)                                                                \
        for (int32_t j = 0; j < rows; j++) s[j] += (int32_t)*a * (int32_t)w[j * ws];             \
    for (int32_t j = 0; j < rows; j++) acc[j] = s[j];                                           \
}

/* The rows' word at offset off against both pixels' sign-extended words (e0, o0), (e1, o1): the rows part of
   TVMP_PX2_STEP. */
#define TVMP_PX2_ROWS(rows, off)                                                                        \
        for (int32_t j = 0; j < rows; j++) {                                                            \
            uint32_t y;                                                                                 \
            memcpy(&y, w + j * ws + (off), 4);                                                          \
            uint32_t ye = __sxtb16(y), yo = tvmp_sxtb16_ror8(y);                                        \
            s0[j] = __smlad(o0, yo, __smlad(e0, ye, s0[j]));                                            \
            s1[j] = __smlad(o1, yo, __smlad(e1, ye, s1[j]));                                            \
        }

/* One word (4 channels at offset off) of both pixels against the rows: the body of TVMP_PX2_KERNEL. */
#define TVMP_PX2_STEP(rows, off) do {                                                                   \
        uint32_t x0, x1;                                                                                \
        memcpy(&x0, a + (off), 4);                                                                      \
        memcpy(&x1, a + as + (off), 4);                                                                 \
        uint32_t e0 = __sxtb16(x0), o0 = tvmp_sxtb16_ror8(x0);                                          \
        uint32_t e1 = __sxtb16(x1), o1 = tvmp_sxtb16_ror8(x1);                                          \
        TVMP_PX2_ROWS(rows, off)                                                                        \
    } while (0)

/* Two activation vectors (pixels ``as`` bytes apart) against ``rows`` weight rows: acc[p * rows + j]. Each
   weight word is loaded and sign-extended once for both pixels, each activation word once for all rows. */
#define TVMP_PX2_KERNEL(name, rows)                                                                     \
TVMP_INLINE void name(const int8_t *a, int32_t as, const int8_t *w, int32_t ws, int32_t n, int32_t *acc) { \
    int32_t s0[rows], s1[rows];                                                                         \
    for (int32_t j = 0; j < rows; j++) s0[j] = acc[j], s1[j] = acc[rows + j];                          \
    for (; n >= 8; n -= 8, a += 8, w += 8) { /* two words per iteration: less loop overhead */          \
        TVMP_PX2_STEP(rows, 0);                                                                         \
        TVMP_PX2_STEP(rows, 4);                                                                         \
    }                                                                                                   \
    if (n >= 4) {                                                                                       \
        TVMP_PX2_STEP(rows, 0);                                                                         \
        n -= 4, a += 4, w += 4;                                                                         \
    }                                                                                                   \
    for (; n > 0; n--, a++, w++)                                                                        \
        for (int32_t j = 0; j < rows; j++) {                                                            \
            s0[j] += (int32_t)a[0] * (int32_t)w[j * ws];                                                \
            s1[j] += (int32_t)a[as] * (int32_t)w[j * ws];                                               \
        }                                                                                               \
    for (int32_t j = 0; j < rows; j++) acc[j] = s0[j], acc[rows + j] = s1[j];                          \
}

/* The pixel pair (a, a + as; n channels, n % 4 == 0) sign-extended for tvmp_dot_q15_px2_rows*: per four channels
   the words SXTB16(x0), SXTB16(x0 ror 8), SXTB16(x1), SXTB16(x1 ror 8) (channels (0, 2) and (1, 3) of pixel 0,
   then pixel 1): n words in q, four-byte aligned. */
TVMP_INLINE void tvmp_widen_px2(const int8_t *a, int32_t as, int32_t n, uint32_t *q) {
    for (; n >= 4; n -= 4, a += 4, q += 4) {
        uint32_t x0, x1;
        memcpy(&x0, a, 4);
        memcpy(&x1, a + as, 4);
        q[0] = __sxtb16(x0), q[1] = tvmp_sxtb16_ror8(x0);
        q[2] = __sxtb16(x1), q[3] = tvmp_sxtb16_ror8(x1);
    }
}

/* tvmp_widen_px2's words from channel planes (pixel p of channel c at a[c * cs + p], n % 4 == 0): per four
   channels four halfword loads (both pixels of one channel each), two words of channels (0, 2) and (1, 3)
   holding bytes (p0, p1, p0, p1), and each split by SXTB16 without and with ror 8 into pixel 0's and pixel 1's. */
TVMP_INLINE void tvmp_widen_px2_planes(const int8_t *a, int32_t cs, int32_t n, uint32_t *q) {
    for (; n >= 4; n -= 4, a += 4 * cs, q += 4) {
        uint16_t h0, h1, h2, h3;
        memcpy(&h0, a, 2);
        memcpy(&h1, a + cs, 2);
        memcpy(&h2, a + 2 * cs, 2);
        memcpy(&h3, a + 3 * cs, 2);
        uint32_t x02 = (uint32_t)h0 | ((uint32_t)h2 << 16), x13 = (uint32_t)h1 | ((uint32_t)h3 << 16);
        q[0] = __sxtb16(x02), q[2] = tvmp_sxtb16_ror8(x02);
        q[1] = __sxtb16(x13), q[3] = tvmp_sxtb16_ror8(x13);
    }
}

/* One pixel's n channels (n % 4 == 0) sign-extended for tvmp_dot_q15_rows*: per four channels (c0, c2), (c1, c3). */
TVMP_INLINE void tvmp_widen_px1(const int8_t *a, int32_t n, uint32_t *q) {
    for (; n >= 4; n -= 4, a += 4, q += 2) {
        uint32_t x;
        memcpy(&x, a, 4);
        q[0] = __sxtb16(x), q[1] = tvmp_sxtb16_ror8(x);
    }
}

/* (lo, hi) = the two words at p, then p advanced by 8 bytes: one LDRD with post-increment. GCC splits an 8-byte
   load into two LDR on these cores; one pointer per weight row (and one for a widened pixel pair), walked by the
   load itself, needs no offset and no address arithmetic (round 17: kws's 1x1 kernels -26 %, vww's -22 %). LDRD
   needs word alignment: the weights are TVMP_WORD_ALIGNED with offsets that are multiples of 4 int16, the pairs
   uint32_t C locals. The clobber measured better than a memory input operand (which made GCC keep a second address
   per row: kws's 1x1 kernels +17 %). */
#define TVMP_LDRD_POST(p, lo, hi) \
    __asm__("ldrd %0, %1, [%2], #8" : "=r"(lo), "=r"(hi), "+r"(p) : : "memory")
/* The rows' next four int8 weights (one LDR at a constant offset j * ws after inlining, two SXTB16) against one
   pixel's words (xe, xo), read by LDRD from the widened copy. One weight pointer for all rows: a pointer per row
   (as the widened kernels walk theirs) made GCC spill three of four accumulators (mcunet-in0's dense layer +23 %). */
#define TVMP_Q15_ROWS_GROUP(rows) {                                                                     \
        uint32_t xe, xo;                                                                                \
        TVMP_LDRD_POST(q, xe, xo);                                                                      \
        for (int32_t j = 0; j < rows; j++) TVMP_ROW_STEP(j);                                            \
        w += 4;                                                                                         \
    }
/* tvmp_dot_s8_rows* on a pixel widened by tvmp_widen_px1 (n % 4 == 0): acc[j]. */
#define TVMP_Q15_ROWS_KERNEL(name, rows)                                                                \
TVMP_INLINE void name(const uint32_t *q, const int8_t *w, int32_t ws, int32_t n, int32_t *acc) {         \
    int32_t s[rows];                                                                                    \
    for (int32_t j = 0; j < rows; j++) s[j] = acc[j];                                                   \
    for (; n >= 8; n -= 8) { /* two groups an iteration */                                              \
        TVMP_Q15_ROWS_GROUP(rows)                                                                       \
        TVMP_Q15_ROWS_GROUP(rows)                                                                       \
    }                                                                                                   \
    if (n >= 4) TVMP_Q15_ROWS_GROUP(rows)                                                               \
    for (int32_t j = 0; j < rows; j++) acc[j] = s[j];                                                   \
}

/* The next four channels of a widened pair (two LDRD) against the rows' int8 words: the body of
   TVMP_Q15_PX2_KERNEL. */
#define TVMP_Q15_PX2_GROUP(rows) {                                                                      \
        uint32_t e0, o0, e1, o1;                                                                        \
        TVMP_LDRD_POST(q, e0, o0);                                                                      \
        TVMP_LDRD_POST(q, e1, o1);                                                                      \
        TVMP_PX2_ROWS(rows, 0)                                                                          \
        w += 4;                                                                                         \
    }

/* tvmp_dot_s8_px2_rows* on a pair widened by tvmp_widen_px2 (n % 4 == 0): acc[p * rows + j]. Round 28: the pair by
   LDRD and four groups an iteration, mcunet-in0's int8 2 x 2 layers on the F412 -13 %. */
#define TVMP_Q15_PX2_KERNEL(name, rows)                                                                 \
TVMP_INLINE void name(const uint32_t *q, const int8_t *w, int32_t ws, int32_t n, int32_t *acc) {         \
    int32_t s0[rows], s1[rows];                                                                         \
    for (int32_t j = 0; j < rows; j++) s0[j] = acc[j], s1[j] = acc[rows + j];                          \
    for (; n >= 16; n -= 16) { /* four groups an iteration: the count, on the stack (no register left), once */   \
        TVMP_Q15_PX2_GROUP(rows)                                                                        \
        TVMP_Q15_PX2_GROUP(rows)                                                                        \
        TVMP_Q15_PX2_GROUP(rows)                                                                        \
        TVMP_Q15_PX2_GROUP(rows)                                                                        \
    }                                                                                                   \
    if (n >= 8) {                                                                                       \
        TVMP_Q15_PX2_GROUP(rows)                                                                        \
        TVMP_Q15_PX2_GROUP(rows)                                                                        \
        n -= 8;                                                                                         \
    }                                                                                                   \
    if (n >= 4) TVMP_Q15_PX2_GROUP(rows)                                                                \
    for (int32_t j = 0; j < rows; j++) acc[j] = s0[j], acc[rows + j] = s1[j];                          \
}

/* y = the (unaligned) word at p, then p advanced by 4 bytes: one LDR with post-increment, so that the row's walk
   needs no address arithmetic of its own (as TVMP_LDRD_POST). */
#define TVMP_LDR_POST(p, y) __asm__("ldr %0, [%1], #4" : "=r"(y), "+r"(p) : : "memory")
/* One int8 weight row's next four (one LDR, two SXTB16) against four pixels' widened words (two LDRD from each
   pair): the body of tvmp_dot_q15_px4_row. */
#define TVMP_Q15_PX4_GROUP {                                                                            \
        uint32_t y, e, o;                                                                               \
        TVMP_LDR_POST(w, y);                                                                            \
        uint32_t ye = __sxtb16(y), yo = tvmp_sxtb16_ror8(y);                                            \
        TVMP_LDRD_POST(q0, e, o);                                                                       \
        s0 = __smlad(o, yo, __smlad(e, ye, s0));                                                        \
        TVMP_LDRD_POST(q0, e, o);                                                                       \
        s1 = __smlad(o, yo, __smlad(e, ye, s1));                                                        \
        TVMP_LDRD_POST(q1, e, o);                                                                       \
        s2 = __smlad(o, yo, __smlad(e, ye, s2));                                                        \
        TVMP_LDRD_POST(q1, e, o);                                                                       \
        s3 = __smlad(o, yo, __smlad(e, ye, s3));                                                        \
    }
/* One int8 weight row (n % 4 == 0) against four pixels widened as two pairs (q0: pixels 0, 1; q1: pixels 2, 3;
   tvmp_widen_px2's words each), added to acc[0], acc[rows], acc[2 rows], acc[3 rows]: each weight word is loaded
   and sign-extended once for the four pixels (the pair kernels: once a pair). */
TVMP_INLINE void tvmp_dot_q15_px4_row(const uint32_t *q0, const uint32_t *q1, const int8_t *w, int32_t n,
                                      int32_t rows, int32_t *acc) {
    int32_t s0 = acc[0], s1 = acc[rows], s2 = acc[2 * rows], s3 = acc[3 * rows];
    for (const int8_t *end = w + (n & ~15); w != end;) { /* four groups an iteration, to the end address */
        TVMP_Q15_PX4_GROUP
        TVMP_Q15_PX4_GROUP
        TVMP_Q15_PX4_GROUP
        TVMP_Q15_PX4_GROUP
    }
    n &= 15;
    if (n >= 8) {
        TVMP_Q15_PX4_GROUP
        TVMP_Q15_PX4_GROUP
        n -= 8;
    }
    if (n >= 4) TVMP_Q15_PX4_GROUP
    acc[0] = s0, acc[rows] = s1, acc[2 * rows] = s2, acc[3 * rows] = s3;
}
#else
TVMP_INLINE int32_t tvmp_dot_s8(const int8_t *a, const int8_t *b, int32_t n, int32_t acc) {
    for (int32_t i = 0; i < n; i++) acc += (int32_t)a[i] * (int32_t)b[i];
    return acc;
}
#define TVMP_ROWS_KERNEL(name, rows)                                                            \
TVMP_INLINE void name(const int8_t *a, const int8_t *w, int32_t ws, int32_t n, int32_t *acc) {  \
    for (int32_t j = 0; j < rows; j++) acc[j] = tvmp_dot_s8(a, w + j * ws, n, acc[j]);          \
}
#define TVMP_PX2_KERNEL(name, rows)                                                                     \
TVMP_INLINE void name(const int8_t *a, int32_t as, const int8_t *w, int32_t ws, int32_t n, int32_t *acc) { \
    for (int32_t p = 0; p < 2; p++)                                                                     \
        for (int32_t j = 0; j < rows; j++)                                                              \
            acc[p * rows + j] = tvmp_dot_s8(a + p * as, w + j * ws, n, acc[p * rows + j]);               \
}

/* The plain forms keep the DSP path's words: per four channels (c0 | c2 << 16), (c1 | c3 << 16) of pixel 0, then of
   pixel 1, each half an int16. */
TVMP_INLINE uint32_t tvmp_pack16(int32_t lo, int32_t hi) { return (uint32_t)(uint16_t)lo | ((uint32_t)(uint16_t)hi << 16); }
TVMP_INLINE void tvmp_widen_px2(const int8_t *a, int32_t as, int32_t n, uint32_t *q) {
    for (int32_t i = 0; i < n; i += 4, q += 4)
        for (int32_t p = 0; p < 2; p++) {
            const int8_t *x = a + p * as + i;
            q[2 * p] = tvmp_pack16(x[0], x[2]), q[2 * p + 1] = tvmp_pack16(x[1], x[3]);
        }
}
TVMP_INLINE void tvmp_widen_px1(const int8_t *a, int32_t n, uint32_t *q) {
    for (int32_t i = 0; i < n; i += 4, q += 2) q[0] = tvmp_pack16(a[i], a[i + 2]), q[1] = tvmp_pack16(a[i + 1], a[i + 3]);
}
/* the products of one widened word pair (e, o) = ((x0, x2), (x1, x3)) with int8 weights y[0..3] */
TVMP_INLINE int32_t tvmp_dot4_q15(uint32_t e, uint32_t o, const int8_t *y) {
    return (int32_t)(int16_t)(e & 0xffffu) * y[0] + ((int32_t)e >> 16) * y[2] + (int32_t)(int16_t)(o & 0xffffu) * y[1]
        + ((int32_t)o >> 16) * y[3];
}
#define TVMP_Q15_ROWS_KERNEL(name, rows)                                                                \
TVMP_INLINE void name(const uint32_t *q, const int8_t *w, int32_t ws, int32_t n, int32_t *acc) {         \
    for (int32_t i = 0; i < n; i += 4, q += 2)                                                          \
        for (int32_t j = 0; j < rows; j++) acc[j] += tvmp_dot4_q15(q[0], q[1], w + j * ws + i);         \
}
TVMP_INLINE void tvmp_widen_px2_planes(const int8_t *a, int32_t cs, int32_t n, uint32_t *q) {
    for (int32_t i = 0; i < n; i += 4, q += 4)
        for (int32_t p = 0; p < 2; p++) {
            const int8_t *x = a + i * cs + p;
            q[2 * p] = tvmp_pack16(x[0], x[2 * cs]), q[2 * p + 1] = tvmp_pack16(x[cs], x[3 * cs]);
        }
}
#define TVMP_Q15_PX2_KERNEL(name, rows)                                                                 \
TVMP_INLINE void name(const uint32_t *q, const int8_t *w, int32_t ws, int32_t n, int32_t *acc) {         \
    for (int32_t i = 0; i < n; i += 4, q += 4)                                                          \
        for (int32_t p = 0; p < 2; p++)                                                                 \
            for (int32_t j = 0; j < rows; j++) {                                                        \
                acc[p * rows + j] += tvmp_dot4_q15(q[2 * p], q[2 * p + 1], w + j * ws + i);              \
            }                                                                                           \
}
TVMP_INLINE void tvmp_dot_q15_px4_row(const uint32_t *q0, const uint32_t *q1, const int8_t *w, int32_t n,
                                      int32_t rows, int32_t *acc) {
    for (int32_t i = 0; i < n; i += 4, q0 += 4, q1 += 4)
        for (int32_t p = 0; p < 4; p++) {
            const uint32_t *x = p < 2 ? q0 + 2 * p : q1 + 2 * (p - 2);
            acc[p * rows] += tvmp_dot4_q15(x[0], x[1], w + i);
        }
}
#endif
/* Four pixels (two pairs widened by tvmp_widen_px2 or _planes, n words each: pixels 0, 1 at q, 2, 3 at q + n)
   against ``rows`` int8 weight rows, ws bytes apart: acc[p * rows + j], row after row (4 accumulators, no
   spill; the row loop unrolled, which GCC leaves rolled otherwise: mcunet-in0's 2 x 2 layers -0.3 to -1.6 %).
   Used by codegen/four_pixels.py where two pairs meet every channel block of a 1x1 layer. */
#define TVMP_Q15_PX4_KERNEL(name, rows)                                                                 \
TVMP_INLINE void name(const uint32_t *q, const int8_t *w, int32_t ws, int32_t n, int32_t *acc) {         \
    _Pragma("GCC unroll 4")                                                                             \
    for (int32_t j = 0; j < rows; j++) tvmp_dot_q15_px4_row(q, q + n, w + j * ws, n, rows, acc + j);     \
}
TVMP_ROWS_KERNEL(tvmp_dot_s8_rows2, 2)
TVMP_ROWS_KERNEL(tvmp_dot_s8_rows4, 4)
TVMP_PX2_KERNEL(tvmp_dot_s8_px2_rows2, 2)
TVMP_PX2_KERNEL(tvmp_dot_s8_px2_rows4, 4)
TVMP_Q15_ROWS_KERNEL(tvmp_dot_q15_rows2, 2)
TVMP_Q15_ROWS_KERNEL(tvmp_dot_q15_rows4, 4)
TVMP_Q15_PX2_KERNEL(tvmp_dot_q15_px2_rows2, 2)
TVMP_Q15_PX2_KERNEL(tvmp_dot_q15_px2_rows4, 4)
TVMP_Q15_PX4_KERNEL(tvmp_dot_q15_px4_rows2, 2)
TVMP_Q15_PX4_KERNEL(tvmp_dot_q15_px4_rows4, 4)

/* The three dot kernels above on weights stored widened in Flash (codegen/wide_weights.py): int16, each four
   weights (w0, w1, w2, w3) of a row as (w0, w2, w1, w3), so that the two words SXTB16 would make of the int8 word
   are two loads (one LDRD), and no SXTB16 runs on weights. The export stores them so where every read of the
   weights is one of these calls at a multiple of four elements (n and ws too); the same sums in the same order. */
#if defined(__ARM_FEATURE_DSP)
/* The rows' next four widened weights (one LDRD each) against the activations' words (xe, xo). */
#define TVMP_WIDE_ROWS(rows)                                                                            \
        for (int32_t j = 0; j < rows; j++) {                                                            \
            uint32_t ye, yo;                                                                            \
            TVMP_LDRD_POST(p[j], ye, yo);                                                               \
            s[j] = __smlad(xo, yo, __smlad(xe, ye, s[j]));                                              \
        }
#define TVMP_S8W_ROWS_KERNEL(name, rows)                                                                \
TVMP_INLINE void name(const int8_t *a, const int16_t *w, int32_t ws, int32_t n, int32_t *acc) {          \
    int32_t s[rows];                                                                                    \
    const int16_t *p[rows];                                                                             \
    for (int32_t j = 0; j < rows; j++) s[j] = acc[j], p[j] = w + j * ws;                               \
    for (; n >= 4; n -= 4, a += 4) {                                                                    \
        uint32_t x;                                                                                     \
        memcpy(&x, a, 4);                                                                               \
        uint32_t xe = __sxtb16(x), xo = tvmp_sxtb16_ror8(x);                                            \
        TVMP_WIDE_ROWS(rows)                                                                            \
    }                                                                                                   \
    for (int32_t j = 0; j < rows; j++) acc[j] = s[j];                                                   \
}
#define TVMP_Q15W_ROWS_KERNEL(name, rows)                                                               \
TVMP_INLINE void name(const uint32_t *q, const int16_t *w, int32_t ws, int32_t n, int32_t *acc) {        \
    int32_t s[rows];                                                                                    \
    const int16_t *p[rows];                                                                             \
    for (int32_t j = 0; j < rows; j++) s[j] = acc[j], p[j] = w + j * ws;                               \
    for (; n >= 4; n -= 4) {                                                                            \
        uint32_t xe, xo;                                                                                \
        TVMP_LDRD_POST(q, xe, xo);                                                                      \
        TVMP_WIDE_ROWS(rows)                                                                            \
    }                                                                                                   \
    for (int32_t j = 0; j < rows; j++) acc[j] = s[j];                                                   \
}
#define TVMP_WIDE_PX2_ROWS(rows)                                                                        \
        for (int32_t j = 0; j < rows; j++) {                                                            \
            uint32_t ye, yo;                                                                            \
            TVMP_LDRD_POST(p[j], ye, yo);                                                               \
            s0[j] = __smlad(o0, yo, __smlad(e0, ye, s0[j]));                                            \
            s1[j] = __smlad(o1, yo, __smlad(e1, ye, s1[j]));                                            \
        }
#define TVMP_S8W_PX2_KERNEL(name, rows)                                                                 \
TVMP_INLINE void name(const int8_t *a, int32_t as, const int16_t *w, int32_t ws, int32_t n, int32_t *acc) { \
    int32_t s0[rows], s1[rows];                                                                         \
    const int16_t *p[rows];                                                                             \
    for (int32_t j = 0; j < rows; j++) s0[j] = acc[j], s1[j] = acc[rows + j], p[j] = w + j * ws;       \
    for (; n >= 4; n -= 4, a += 4) {                                                                    \
        uint32_t x0, x1;                                                                                \
        memcpy(&x0, a, 4);                                                                              \
        memcpy(&x1, a + as, 4);                                                                         \
        uint32_t e0 = __sxtb16(x0), o0 = tvmp_sxtb16_ror8(x0), e1 = __sxtb16(x1), o1 = tvmp_sxtb16_ror8(x1); \
        TVMP_WIDE_PX2_ROWS(rows)                                                                        \
    }                                                                                                   \
    for (int32_t j = 0; j < rows; j++) acc[j] = s0[j], acc[rows + j] = s1[j];                          \
}
/* The next four channels of the widened pair's words by LDRD too (C locals, word-aligned) against the rows. */
#define TVMP_Q15W_PX2_GROUP(rows) {                                                                     \
        uint32_t e0, o0, e1, o1;                                                                        \
        TVMP_LDRD_POST(q, e0, o0);                                                                      \
        TVMP_LDRD_POST(q, e1, o1);                                                                      \
        TVMP_WIDE_PX2_ROWS(rows)                                                                        \
    }
#define TVMP_Q15W_PX2_KERNEL(name, rows)                                                                \
TVMP_INLINE void name(const uint32_t *q, const int16_t *w, int32_t ws, int32_t n, int32_t *acc) {        \
    int32_t s0[rows], s1[rows];                                                                         \
    const int16_t *p[rows];                                                                             \
    for (int32_t j = 0; j < rows; j++) s0[j] = acc[j], s1[j] = acc[rows + j], p[j] = w + j * ws;       \
    for (; n >= 8; n -= 8) { /* two groups an iteration: a long row's loop test every eight channels */      \
        TVMP_Q15W_PX2_GROUP(rows)                                                                       \
        TVMP_Q15W_PX2_GROUP(rows)                                                                       \
    }                                                                                                   \
    if (n >= 4) {                                                                                       \
        TVMP_Q15W_PX2_GROUP(rows)                                                                       \
    }                                                                                                   \
    for (int32_t j = 0; j < rows; j++) acc[j] = s0[j], acc[rows + j] = s1[j];                          \
}
#else
/* (w0, w2, w1, w3) at y: the products with activations x0..x3 in the DSP path's order */
TVMP_INLINE int32_t tvmp_dot4_wide(const int16_t *y, int32_t x0, int32_t x1, int32_t x2, int32_t x3) {
    return x0 * y[0] + x2 * y[1] + x1 * y[2] + x3 * y[3];
}
#define TVMP_S8W_ROWS_KERNEL(name, rows)                                                                \
TVMP_INLINE void name(const int8_t *a, const int16_t *w, int32_t ws, int32_t n, int32_t *acc) {          \
    for (int32_t i = 0; i < n; i += 4)                                                                  \
        for (int32_t j = 0; j < rows; j++) acc[j] += tvmp_dot4_wide(w + j * ws + i, a[i], a[i + 1], a[i + 2], a[i + 3]); \
}
#define TVMP_S8W_PX2_KERNEL(name, rows)                                                                 \
TVMP_INLINE void name(const int8_t *a, int32_t as, const int16_t *w, int32_t ws, int32_t n, int32_t *acc) { \
    for (int32_t i = 0; i < n; i += 4)                                                                  \
        for (int32_t p = 0; p < 2; p++)                                                                 \
            for (int32_t j = 0; j < rows; j++) {                                                        \
                const int8_t *x = a + p * as + i;                                                       \
                acc[p * rows + j] += tvmp_dot4_wide(w + j * ws + i, x[0], x[1], x[2], x[3]);            \
            }                                                                                           \
}
#define TVMP_Q15W_ROWS_KERNEL(name, rows)                                                               \
TVMP_INLINE void name(const uint32_t *q, const int16_t *w, int32_t ws, int32_t n, int32_t *acc) {        \
    for (int32_t i = 0; i < n; i += 4, q += 2)                                                          \
        for (int32_t j = 0; j < rows; j++)                                                              \
            acc[j] += tvmp_dot4_wide(w + j * ws + i, (int16_t)(q[0] & 0xffffu), (int16_t)(q[1] & 0xffffu), \
                                     (int32_t)q[0] >> 16, (int32_t)q[1] >> 16);                         \
}
#define TVMP_Q15W_PX2_KERNEL(name, rows)                                                                \
TVMP_INLINE void name(const uint32_t *q, const int16_t *w, int32_t ws, int32_t n, int32_t *acc) {        \
    for (int32_t i = 0; i < n; i += 4, q += 4)                                                          \
        for (int32_t p = 0; p < 2; p++)                                                                 \
            for (int32_t j = 0; j < rows; j++) {                                                        \
                uint32_t e = q[2 * p], o = q[2 * p + 1];                                                \
                acc[p * rows + j] += tvmp_dot4_wide(w + j * ws + i, (int16_t)(e & 0xffffu), (int16_t)(o & 0xffffu), \
                                                    (int32_t)e >> 16, (int32_t)o >> 16);                \
            }                                                                                           \
}
#endif
TVMP_S8W_ROWS_KERNEL(tvmp_dot_s8w_rows2, 2)
TVMP_S8W_ROWS_KERNEL(tvmp_dot_s8w_rows4, 4)
TVMP_S8W_PX2_KERNEL(tvmp_dot_s8w_px2_rows2, 2)
TVMP_S8W_PX2_KERNEL(tvmp_dot_s8w_px2_rows4, 4)
TVMP_Q15W_ROWS_KERNEL(tvmp_dot_q15w_rows2, 2)
TVMP_Q15W_ROWS_KERNEL(tvmp_dot_q15w_rows4, 4)
TVMP_Q15W_PX2_KERNEL(tvmp_dot_q15w_px2_rows2, 2)
TVMP_Q15W_PX2_KERNEL(tvmp_dot_q15w_px2_rows4, 4)

/* int8(clamp(nearbyintf(q) + zp, -128, 127)) as float32 arithmetic computes it (q = x / scale: a float input's
   quantization; codegen/quantize_kernels.py): rounding half to even (the default rounding mode), a NaN giving 127
   as the float clamp does. With an FPU and the DSP extension: VCVTR (saturating), QADD, SSAT. */
TVMP_INLINE int32_t tvmp_quant_s8(float q, int32_t zp) {
#if defined(__ARM_FP) && (__ARM_FP & 4) && defined(__ARM_FEATURE_DSP)
#if defined(TVMP_FPV5)
    /* FPv5 (Cortex-M7; the board's flags define TVMP_FPV5): VMINNM against 2^20 gives the number where q is one (unchanged up to 2^20; above, the sum
       saturates to 127 either way) and 2^20 for a NaN, which then saturates to 127: no compare and branch */
    __asm__("vminnm.f32 %0, %1, %2" : "=t"(q) : "t"(q), "t"(1048576.0f));
#else
    if (q != q) return 127;
#endif
    float t;
    int32_t r;
    __asm__("vcvtr.s32.f32 %0, %1" : "=t"(t) : "t"(q));
    memcpy(&r, &t, 4);
    return __ssat(__qadd(r, zp), 8);
#else
    float v = nearbyintf(q) + (float)zp;
    return v < 127.0f ? (v > -128.0f ? (int32_t)v : -128) : 127;
#endif
}

/* A row of a float input's quantization: dst[i] = tvmp_quant_s8(src[i] / scale, zp) for i < n (the same division
   and rounding as the loop it replaces, codegen/quantize_kernels.py), four values a step so that the loop's test
   and the pointers' steps are shared (a patch's input rows are short: the loop's own test cost 4 a value). */
TVMP_INLINE void tvmp_quant_row_s8(int8_t *restrict dst, const float *restrict src, int32_t n, float scale,
                                   int32_t zp) {
    for (; n >= 4; n -= 4, src += 4, dst += 4) {
        dst[0] = (int8_t)tvmp_quant_s8(src[0] / scale, zp);
        dst[1] = (int8_t)tvmp_quant_s8(src[1] / scale, zp);
        dst[2] = (int8_t)tvmp_quant_s8(src[2] / scale, zp);
        dst[3] = (int8_t)tvmp_quant_s8(src[3] / scale, zp);
    }
    for (; n > 0; --n) *dst++ = (int8_t)tvmp_quant_s8(*src++ / scale, zp);
}

/* x clamped to [-128, 127]: one SSAT on cores with the DSP extension. */
TVMP_INLINE int32_t tvmp_sat_s8(int32_t x) {
#if defined(__ARM_FEATURE_DSP)
    return __ssat(x, 8);
#else
    return x < -128 ? -128 : (x > 127 ? 127 : x);
#endif
}

/* The sum of n int8 values (the weights of a convolution tap that reads only padding). */
TVMP_INLINE int32_t tvmp_sum_s8(const int8_t *w, int32_t n) {
    int32_t sum = 0;
    for (int32_t i = 0; i < n; i++) sum += w[i];
    return sum;
}

/* One convolution window (a depthwise output): taps (ry, rx) in kh x kw read p[pb + ry*sy + rx*sx], or the pad
   value outside the rows [y0, y1) and columns [x0, x1), times w[wb + ry*wy + rx*wx]. Called with constant
   kernel sizes and strides, the interior case compiles to a test-free, fully unrolled window. */
TVMP_INLINE int32_t tvmp_window_s8(const int8_t *p, int32_t pb, int32_t sy, int32_t sx, const int8_t *w, int32_t wb,
                                   int32_t wy, int32_t wx, int32_t kh, int32_t kw, int32_t y0, int32_t y1,
                                   int32_t x0, int32_t x1, int32_t pad, int32_t acc) {
    w += wb;
    if (y0 == 0 && y1 == kh && x0 == 0 && x1 == kw) {
        const int8_t *q = p + pb;
        for (int32_t ry = 0; ry < kh; ry++)
            for (int32_t rx = 0; rx < kw; rx++) acc += (int32_t)q[ry * sy + rx * sx] * (int32_t)w[ry * wy + rx * wx];
        return acc;
    }
    for (int32_t ry = 0; ry < kh; ry++)
        for (int32_t rx = 0; rx < kw; rx++) {
            int32_t in = ry >= y0 && ry < y1 && rx >= x0 && rx < x1;
            acc += (in ? (int32_t)p[pb + ry * sy + rx * sx] : pad) * (int32_t)w[ry * wy + rx * wx];
        }
    return acc;
}

/* Two interior windows (no border) of the same channel, the second ``d`` bytes after the first (two adjacent
   outputs of a row): acc[0] and acc[1]. Called with constant sizes and strides, the loop unrolls and the taps the
   windows share (6 of 9 for a 3x3 stride-1 window) are loaded once, each weight once for both. */
TVMP_INLINE void tvmp_window2_s8(const int8_t *p, int32_t pb, int32_t d, int32_t sy, int32_t sx, const int8_t *w,
                                 int32_t wb, int32_t wy, int32_t wx, int32_t kh, int32_t kw, int32_t *acc) {
    const int8_t *q = p + pb;
    int32_t a0 = acc[0], a1 = acc[1];
    w += wb;
#if defined(__ARM_FEATURE_DSP)
    if (kw == 3 && sx == 1 && (d == 1 || d == 2)) {
        /* a kernel row of both windows from one word (taps 0-3; for stride 2 tap 4 from a byte): with the row's
           outer weights paired as (w0, w2), SMLAD takes taps (q0, q2) of the first window and (q1, q3) of the
           second straight from SXTB16's halves, with no repacking; the middle taps in SMLABB / SMLATB */
        for (int32_t ry = 0; ry < kh; ry++) {
            const int8_t *r = q + ry * sy, *wr = w + ry * wy;
            uint32_t x;
            memcpy(&x, r, 4);
            uint32_t e = __sxtb16(x), o = tvmp_sxtb16_ror8(x); /* (q0, q2), (q1, q3) */
            uint32_t w02 = tvmp_pack_lo_lo((uint32_t)(int32_t)wr[0], (uint32_t)(int32_t)wr[2 * wx]);
            int32_t w1 = wr[wx];
            a0 = __smlad(e, w02, a0);          /* q0 w0 + q2 w2 */
            a0 = __smlabb((int32_t)o, w1, a0); /* q1 w1 */
            if (d == 1) {
                a1 = __smlad(o, w02, a1);          /* q1 w0 + q3 w2 */
                a1 = __smlatb((int32_t)e, w1, a1); /* q2 w1 */
            } else {
                a1 = __smlatb((int32_t)e, (int32_t)w02, a1); /* q2 w0 */
                a1 = __smlatb((int32_t)o, w1, a1);           /* q3 w1 */
                a1 = __smlabt((int32_t)r[4], (int32_t)w02, a1); /* q4 w2 */
            }
        }
        acc[0] = a0, acc[1] = a1;
        return;
    }
    if (kw >= 4 && sx == 1 && wx == 1 && d == 1) {
        /* wide contiguous rows (5x5, 7x7, stride 1): per 4 taps the words of taps 0-3 and of their weights give
           e = (q0, q2), o = (q1, q3), (w0, w2), (w1, w3): the first window takes e.(w0, w2) + o.(w1, w3) and the
           second o.(w0, w2) + q2 w1 (SMLATB) + q4 w3, its last term from the next word's low half (or a byte);
           three taps left (7 wide): the word of taps 4-7 against the weights' word from tap 3, (w3, w5) and (w4, w6),
           in two SMLAD and two halfword MACs; fewer: one tap at a time, each input byte loaded once for both */
        for (int32_t ry = 0; ry < kh; ry++) {
            const int8_t *r = q + ry * sy, *wr = w + ry * wy;
            int32_t rx = 0;
            uint32_t wo = 0; /* (w1, w3) of the previous four taps: its w3 meets the next q4 in the second window */
            for (; rx + 4 <= kw; rx += 4) {
                uint32_t x, y;
                memcpy(&x, r + rx, 4);
                memcpy(&y, wr + rx, 4);
                uint32_t e = __sxtb16(x), o = tvmp_sxtb16_ror8(x), we = __sxtb16(y);
                if (rx) a1 = __smlabt((int32_t)e, (int32_t)wo, a1);
                wo = tvmp_sxtb16_ror8(y);
                a0 = __smlad(e, we, a0);
                a0 = __smlad(o, wo, a0);
                a1 = __smlad(o, we, a1);
                a1 = __smlatb((int32_t)e, (int32_t)wo, a1);
            }
            if (kw - rx == 3) {
                uint32_t x, y;
                memcpy(&x, r + rx, 4);
                memcpy(&y, wr + rx - 1, 4);
                uint32_t e = __sxtb16(x), o = tvmp_sxtb16_ror8(x), w35 = __sxtb16(y), w46 = tvmp_sxtb16_ror8(y);
                a1 = __smlabt((int32_t)e, (int32_t)wo, a1); /* q4 w3 */
                a0 = __smlad(e, w46, a0);                   /* q4 w4 + q6 w6 */
                a0 = __smlabt((int32_t)o, (int32_t)w35, a0); /* q5 w5 */
                a1 = __smlad(o, w46, a1);                   /* q5 w4 + q7 w6 */
                a1 = __smlatt((int32_t)e, (int32_t)w35, a1); /* q6 w5 */
                continue;
            }
            int32_t next = r[rx];
            a1 = __smlabt(next, (int32_t)wo, a1);
            for (; rx < kw; rx++) {
                int32_t wv = wr[rx], cur = next;
                next = r[rx + 1];
                a0 += cur * wv;
                a1 += next * wv;
            }
        }
        acc[0] = a0, acc[1] = a1;
        return;
    }
    if (kw >= 4 && sx == 1 && wx == 1 && d == 2) {
        /* the same rows at stride 2 (the windows two bytes apart): per 4 taps the second window's (q2, q4), (q3, q5)
           come from the word two bytes on; three taps left (7 wide): the word of taps 4-7 gives the first window's
           (q4, q6), q5 and the second's q6, q7, its q8 a byte (the word after it would read past the window) */
        for (int32_t ry = 0; ry < kh; ry++) {
            const int8_t *r = q + ry * sy, *wr = w + ry * wy;
            int32_t rx = 0;
            for (; rx + 4 <= kw; rx += 4) {
                uint32_t x, x2, y;
                memcpy(&x, r + rx, 4);
                memcpy(&x2, r + rx + 2, 4);
                memcpy(&y, wr + rx, 4);
                uint32_t we = __sxtb16(y), wo = tvmp_sxtb16_ror8(y);
                a0 = __smlad(__sxtb16(x), we, a0);
                a0 = __smlad(tvmp_sxtb16_ror8(x), wo, a0);
                a1 = __smlad(__sxtb16(x2), we, a1);
                a1 = __smlad(tvmp_sxtb16_ror8(x2), wo, a1);
            }
            if (kw - rx == 3) {
                uint32_t x, y;
                memcpy(&x, r + rx, 4);
                memcpy(&y, wr + rx - 1, 4);
                uint32_t e = __sxtb16(x), o = tvmp_sxtb16_ror8(x), w35 = __sxtb16(y), w46 = tvmp_sxtb16_ror8(y);
                a0 = __smlad(e, w46, a0);                        /* q4 w4 + q6 w6 */
                a0 = __smlabt((int32_t)o, (int32_t)w35, a0);     /* q5 w5 */
                a1 = __smlatb((int32_t)e, (int32_t)w46, a1);     /* q6 w4 */
                a1 = __smlatt((int32_t)o, (int32_t)w35, a1);     /* q7 w5 */
                a1 = __smlabt((int32_t)r[rx + 4], (int32_t)w46, a1); /* q8 w6 */
                continue;
            }
            for (; rx < kw; rx++) {
                int32_t wv = wr[rx];
                a0 += r[rx] * wv;
                a1 += r[rx + 2] * wv;
            }
        }
        acc[0] = a0, acc[1] = a1;
        return;
    }
#endif
    for (int32_t ry = 0; ry < kh; ry++)
        for (int32_t rx = 0; rx < kw; rx++) {
            int32_t wv = w[ry * wy + rx * wx];
            a0 += (int32_t)q[ry * sy + rx * sx] * wv;
            a1 += (int32_t)q[d + ry * sy + rx * sx] * wv;
        }
    acc[0] = a0, acc[1] = a1;
}

/* tvmp_window4_s8[w]'s taps one at a time (no DSP extension, or a form the paths below do not take); `at` is tap
   (ry, rx)'s place in the weights. Then the four sums stored. */
#define TVMP_WINDOW4_TAPS(at) do {                                                                         \
        for (int32_t ry = 0; ry < kh; ry++)                                                                \
            for (int32_t rx = 0; rx < kw; rx++) {                                                          \
                int32_t wv = w[at];                                                                        \
                const int8_t *t = q + ry * sy + rx * sx;                                                   \
                a0 += (int32_t)t[0] * wv, a1 += (int32_t)t[d] * wv;                                        \
                a2 += (int32_t)t[2 * d] * wv, a3 += (int32_t)t[3 * d] * wv;                                \
            }                                                                                              \
        acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;                                                \
    } while (0)

#if defined(__ARM_FEATURE_DSP)
/* n (3 or 4) interior windows of a stride-2 row, 7 wide (kw % 4 == 3), each 2 bytes after the previous: a[k] += window
   k's taps. Output k's taps start 2k bytes on, so each output reads its own words (the later outputs' words serve
   the earlier ones' next taps); per four taps one word and two SMLAD an output, the weights' word (w0, w2), (w1, w3)
   shared; the three taps left: the weights' word at tap 3, (w3, w5), (w4, w6), the last output's word one byte
   early (its word would read past the windows). (5 wide, one tap left a byte an output, measured 3 % slower than
   tvmp_window2_s8 on mcunet-in3: not here.) */
TVMP_INLINE void tvmp_s2_rows7(const int8_t *q, int32_t sy, const int8_t *w, int32_t wy, int32_t kh, int32_t kw,
                               int32_t n, int32_t *a) {
    for (int32_t ry = 0; ry < kh; ry++) {
        const int8_t *r = q + ry * sy, *wr = w + ry * wy;
        int32_t rx = 0;
        for (; rx + 4 <= kw; rx += 4) {
            uint32_t y;
            memcpy(&y, wr + rx, 4);
            uint32_t we = __sxtb16(y), wo = tvmp_sxtb16_ror8(y);
            for (int32_t k = 0; k < n; k++) {
                uint32_t x;
                memcpy(&x, r + rx + 2 * k, 4);
                a[k] = __smlad(tvmp_sxtb16_ror8(x), wo, __smlad(__sxtb16(x), we, a[k]));
            }
        }
        uint32_t y;
        memcpy(&y, wr + rx - 1, 4);
        uint32_t w35 = __sxtb16(y), w46 = tvmp_sxtb16_ror8(y);
        for (int32_t k = 0; k < n - 1; k++) { /* (q4, q6) and q5 */
            uint32_t x;
            memcpy(&x, r + rx + 2 * k, 4);
            a[k] = __smlabt((int32_t)tvmp_sxtb16_ror8(x), (int32_t)w35, __smlad(__sxtb16(x), w46, a[k]));
        }
        uint32_t x; /* the last: q3..q6 */
        memcpy(&x, r + rx + 2 * (n - 1) - 1, 4);
        a[n - 1] = __smlatt((int32_t)__sxtb16(x), (int32_t)w35, __smlad(tvmp_sxtb16_ror8(x), w46, a[n - 1]));
    }
}
#endif

/* Four interior windows of one channel, each the next one ``d`` bytes on (four adjacent outputs of a row): acc[0..3].
   With the DSP extension, for odd kernel widths from 5 over contiguous rows (5x5, 7x7), stride 1: per four taps
   the words at taps 0 and 2 give e = (q0, q2), o = (q1, q3), e2 = (q2, q4), o2 = (q3, q5), and the weights'
   (w0, w2), (w1, w3); output k takes its pairs from them in two SMLAD each (the fourth output's second from the
   next word's e), so a kernel row of four outputs costs 17 instructions per four taps against the pair path's
   21 per two outputs. Three taps left (7 wide): the same from the weights' word at tap 3, (w3, w5), (w4, w6);
   one left (5 wide): SMLA(B|T)B on the halves already loaded. Stride 2 (d = 2), 7 wide, below. No read beyond
   the four windows' span. */
TVMP_INLINE void tvmp_window4_s8(const int8_t *p, int32_t pb, int32_t d, int32_t sy, int32_t sx, const int8_t *w,
                                 int32_t wb, int32_t wy, int32_t wx, int32_t kh, int32_t kw, int32_t *acc) {
    const int8_t *q = p + pb;
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    w += wb;
#if defined(__ARM_FEATURE_DSP)
    if (kw >= 5 && (kw & 1) && sx == 1 && wx == 1 && d == 1) {
        for (int32_t ry = 0; ry < kh; ry++) {
            const int8_t *r = q + ry * sy, *wr = w + ry * wy;
            int32_t rx = 0;
            uint32_t wo = 0; /* (w1, w3) of the previous four taps: the fourth output's (q4, q6) meets it */
            for (; rx + 4 <= kw; rx += 4) {
                uint32_t x, x2, y;
                memcpy(&x, r + rx, 4);
                memcpy(&x2, r + rx + 2, 4);
                memcpy(&y, wr + rx, 4);
                uint32_t e = __sxtb16(x), o = tvmp_sxtb16_ror8(x), e2 = __sxtb16(x2), o2 = tvmp_sxtb16_ror8(x2);
                uint32_t we = __sxtb16(y);
                if (rx) a3 = __smlad(e, wo, a3);
                wo = tvmp_sxtb16_ror8(y);
                a0 = __smlad(e, we, a0);  /* q0 w0 + q2 w2 */
                a0 = __smlad(o, wo, a0);  /* q1 w1 + q3 w3 */
                a1 = __smlad(o, we, a1);  /* q1 w0 + q3 w2 */
                a1 = __smlad(e2, wo, a1); /* q2 w1 + q4 w3 */
                a2 = __smlad(e2, we, a2); /* q2 w0 + q4 w2 */
                a2 = __smlad(o2, wo, a2); /* q3 w1 + q5 w3 */
                a3 = __smlad(o2, we, a3); /* q3 w0 + q5 w2 */
            }
            uint32_t x;
            memcpy(&x, r + rx, 4);
            uint32_t e = __sxtb16(x), o = tvmp_sxtb16_ror8(x); /* (q4, q6), (q5, q7) */
            a3 = __smlad(e, wo, a3);                          /* q4 w1 + q6 w3 */
            if (kw - rx == 3) {
                uint32_t x2, y;
                memcpy(&x2, r + rx + 2, 4);
                memcpy(&y, wr + rx - 1, 4);
                uint32_t e2 = __sxtb16(x2), o2 = tvmp_sxtb16_ror8(x2); /* (q6, q8), (q7, q9) */
                uint32_t w35 = __sxtb16(y), w46 = tvmp_sxtb16_ror8(y);
                a0 = __smlad(e, w46, a0);                     /* q4 w4 + q6 w6 */
                a0 = __smlabt((int32_t)o, (int32_t)w35, a0);  /* q5 w5 */
                a1 = __smlad(o, w46, a1);                     /* q5 w4 + q7 w6 */
                a1 = __smlatt((int32_t)e, (int32_t)w35, a1);  /* q6 w5 */
                a2 = __smlad(e2, w46, a2);                    /* q6 w4 + q8 w6 */
                a2 = __smlabt((int32_t)o2, (int32_t)w35, a2); /* q7 w5 */
                a3 = __smlad(o2, w46, a3);                    /* q7 w4 + q9 w6 */
                a3 = __smlatt((int32_t)e2, (int32_t)w35, a3); /* q8 w5 */
            } else { /* one tap left: w4 against q4..q7 */
                int32_t w4 = wr[rx];
                a0 = __smlabb((int32_t)e, w4, a0);
                a1 = __smlabb((int32_t)o, w4, a1);
                a2 = __smlatb((int32_t)e, w4, a2);
                a3 = __smlatb((int32_t)o, w4, a3);
            }
        }
        acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
        return;
    }
    if (kw >= 7 && (kw & 3) == 3 && sx == 1 && wx == 1 && d == 2) { /* stride 2, 7 wide */
        int32_t a[4] = {a0, a1, a2, a3};
        tvmp_s2_rows7(q, sy, w, wy, kh, kw, 4, a);
        a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
        acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
        return;
    }
#endif
    TVMP_WINDOW4_TAPS(ry * wy + rx * wx);
}

/* Three interior windows of one channel, each the next one ``d`` bytes on: acc[0..2]. tvmp_window4_s8's stride-2
   path for rows of three outputs (a 7x7 stride-2 layer over a 6 x 6 plane padded to 12 x 12: round 25), without
   the fourth output, whose window would read past the row: per four taps one weight word and one word and two
   SMLAD an output. Other forms tap by tap. */
TVMP_INLINE void tvmp_window3_s8(const int8_t *p, int32_t pb, int32_t d, int32_t sy, int32_t sx, const int8_t *w,
                                 int32_t wb, int32_t wy, int32_t wx, int32_t kh, int32_t kw, int32_t *acc) {
    const int8_t *q = p + pb;
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2];
    w += wb;
#if defined(__ARM_FEATURE_DSP)
    if (kw >= 7 && (kw & 3) == 3 && sx == 1 && wx == 1 && d == 2) {
        int32_t a[3] = {a0, a1, a2};
        tvmp_s2_rows7(q, sy, w, wy, kh, kw, 3, a);
        a0 = a[0], a1 = a[1], a2 = a[2];
        acc[0] = a0, acc[1] = a1, acc[2] = a2;
        return;
    }
#endif
    for (int32_t ry = 0; ry < kh; ry++)
        for (int32_t rx = 0; rx < kw; rx++) {
            int32_t wv = w[ry * wy + rx * wx];
            const int8_t *t = q + ry * sy + rx * sx;
            a0 += (int32_t)t[0] * wv, a1 += (int32_t)t[d] * wv, a2 += (int32_t)t[2 * d] * wv;
        }
    acc[0] = a0, acc[1] = a1, acc[2] = a2;
}

/* tvmp_window4_s8 on depthwise weights stored widened in Flash (codegen/wide_weights.py): int16, each kernel row
   of kw taps (kw % 4 == 3: 7x7) padded with a zero to a multiple of four, each four (w0, w1, w2, w3) as
   (w0, w2, w1, w3) (the last: (w4, w6, w5, 0)); wb and wy count int16 of that layout, wx is 1. A row's weights are
   two LDRD, no SXTB16 (the int8 kernel's row takes two loads and four SXTB16 for them); the same sums. */
TVMP_INLINE int32_t tvmp_wide_pos(int32_t rx) { /* tap rx's place in its row: (w0, w2, w1, w3) per four */
    return (rx & ~3) | ((rx & 1) << 1) | ((rx >> 1) & 1);
}

TVMP_INLINE void tvmp_window4_s8w(const int8_t *p, int32_t pb, int32_t d, int32_t sy, int32_t sx, const int16_t *w,
                                  int32_t wb, int32_t wy, int32_t wx, int32_t kh, int32_t kw, int32_t *acc) {
    const int8_t *q = p + pb;
    int32_t a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    w += wb;
    (void)wx;
#if defined(__ARM_FEATURE_DSP)
    if ((kw & 3) == 3 && sx == 1 && (d == 1 || d == 2)) {
        /* one pointer walks the weights row after row (LDRD post-increments it; rows padded to wy, the layout's
           multiple of four): a pointer per row made GCC keep seven, on the stack (mcunet-in3 7x7 layers -6 %) */
        const int16_t *wp = w;
#pragma GCC unroll 8 /* the kernel rows: GCC leaves the loop of LDRD (asm) rolled, -10 % on a 7x7 stride 2 layer */
        for (int32_t ry = 0; ry < kh; ry++, wp += wy - 4 * ((kw + 1) / 4)) {
            const int8_t *r = q + ry * sy;
            int32_t rx = 0;
            uint32_t wo = 0, n0 = 0, n1 = 0; /* stride 2: the words at rx + 4, rx + 6 (the next taps' first two) */
            for (; rx + 4 <= kw; rx += 4) {
                uint32_t we, wn, x, x2;
                TVMP_LDRD_POST(wp, we, wn);
                if (d == 1) { /* as tvmp_window4_s8 */
                    memcpy(&x, r + rx, 4);
                    memcpy(&x2, r + rx + 2, 4);
                    uint32_t e = __sxtb16(x), o = tvmp_sxtb16_ror8(x), e2 = __sxtb16(x2), o2 = tvmp_sxtb16_ror8(x2);
                    if (rx) a3 = __smlad(e, wo, a3); /* the previous four taps' (w1, w3) against (q4, q6) */
                    a0 = __smlad(o, wn, __smlad(e, we, a0));
                    a1 = __smlad(e2, wn, __smlad(o, we, a1));
                    a2 = __smlad(o2, wn, __smlad(e2, we, a2));
                    a3 = __smlad(o2, we, a3);
                    wo = wn;
                } else {
                    wo = wn;
                    uint32_t x1, x3;
                    memcpy(&x, r + rx, 4);
                    memcpy(&x1, r + rx + 2, 4);
                    memcpy(&x2, r + rx + 4, 4);
                    memcpy(&x3, r + rx + 6, 4);
                    a0 = __smlad(tvmp_sxtb16_ror8(x), wo, __smlad(__sxtb16(x), we, a0));
                    a1 = __smlad(tvmp_sxtb16_ror8(x1), wo, __smlad(__sxtb16(x1), we, a1));
                    a2 = __smlad(tvmp_sxtb16_ror8(x2), wo, __smlad(__sxtb16(x2), we, a2));
                    a3 = __smlad(tvmp_sxtb16_ror8(x3), wo, __smlad(__sxtb16(x3), we, a3));
                    n0 = x2, n1 = x3; /* kept: after the next LDRD (a memory clobber) GCC would load them again */
                }
            }
            uint32_t w46, w50; /* the last three taps: (w4, w6), (w5, 0) */
            TVMP_LDRD_POST(wp, w46, w50);
            if (d == 1) {
                uint32_t x, x2;
                memcpy(&x, r + rx, 4);
                memcpy(&x2, r + rx + 2, 4);
                uint32_t e = __sxtb16(x), o = tvmp_sxtb16_ror8(x), e2 = __sxtb16(x2), o2 = tvmp_sxtb16_ror8(x2);
                if (rx) a3 = __smlad(e, wo, a3); /* q4 w1 + q6 w3 of the fourth output's previous four taps */
                a0 = __smlabb((int32_t)o, (int32_t)w50, __smlad(e, w46, a0));  /* q4 w4 + q6 w6, q5 w5 */
                a1 = __smlatb((int32_t)e, (int32_t)w50, __smlad(o, w46, a1));  /* q5 w4 + q7 w6, q6 w5 */
                a2 = __smlabb((int32_t)o2, (int32_t)w50, __smlad(e2, w46, a2)); /* q6 w4 + q8 w6, q7 w5 */
                a3 = __smlatb((int32_t)e2, (int32_t)w50, __smlad(o2, w46, a3)); /* q7 w4 + q9 w6, q8 w5 */
            } else {
                uint32_t x0 = n0, x1 = n1, x2, x3;
                if (!rx) {
                    memcpy(&x0, r, 4);
                    memcpy(&x1, r + 2, 4);
                }
                memcpy(&x2, r + rx + 4, 4);
                memcpy(&x3, r + rx + 5, 4); /* one byte early: the word at rx + 6 would read past the windows */
                a0 = __smlabb((int32_t)tvmp_sxtb16_ror8(x0), (int32_t)w50, __smlad(__sxtb16(x0), w46, a0));
                a1 = __smlabb((int32_t)tvmp_sxtb16_ror8(x1), (int32_t)w50, __smlad(__sxtb16(x1), w46, a1));
                a2 = __smlabb((int32_t)tvmp_sxtb16_ror8(x2), (int32_t)w50, __smlad(__sxtb16(x2), w46, a2));
                a3 = __smlatb((int32_t)__sxtb16(x3), (int32_t)w50, __smlad(tvmp_sxtb16_ror8(x3), w46, a3));
            }
        }
        acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
        return;
    }
#endif
    TVMP_WINDOW4_TAPS(ry * wy + tvmp_wide_pos(rx));
}

/* tvmp_window2_s8 on depthwise weights stored widened in Flash, the layout of tvmp_window4_s8w (each kernel row
   padded with zeros to a multiple of four, each four as (w0, w2, w1, w3); wb, wy in int16 of it, wx 1): for rows of
   kw % 4 == 1 or 3 taps (5x5, 7x7: a row of 7-wide quads ends in a pair), the groups of four one LDRD each and the
   taps left the next LDRD's (w4, w6), (w5, 0), no SXTB16 on the weights (the int8 kernel: a load and two SXTB16 per
   four, byte loads or a word and two SXTB16 for the rest); no word read past the second window. The same sums. */
TVMP_INLINE void tvmp_window2_s8w(const int8_t *p, int32_t pb, int32_t d, int32_t sy, int32_t sx, const int16_t *w,
                                  int32_t wb, int32_t wy, int32_t wx, int32_t kh, int32_t kw, int32_t *acc) {
    const int8_t *q = p + pb;
    int32_t a0 = acc[0], a1 = acc[1];
    w += wb;
    (void)wx;
#if defined(__ARM_FEATURE_DSP)
    if ((kw & 1) == 1 && sx == 1 && (d == 1 || d == 2)) {
        const int16_t *wp = w; /* one pointer through the rows (as tvmp_window4_s8w): LDRD post-increments it */
        for (int32_t ry = 0; ry < kh; ry++, wp += wy - (kw + 3) / 4 * 4) {
            const int8_t *r = q + ry * sy;
            int32_t rx = 0;
            for (; rx + 4 <= kw; rx += 4) {
                uint32_t we, wo, x, x2;
                TVMP_LDRD_POST(wp, we, wo);
                memcpy(&x, r + rx, 4);
                memcpy(&x2, r + rx + 2, 4);
                uint32_t e = __sxtb16(x), o = tvmp_sxtb16_ror8(x), e2 = __sxtb16(x2); /* (q0, q2), (q1, q3), (q2, q4) */
                a0 = __smlad(o, wo, __smlad(e, we, a0));
                if (d == 1)
                    a1 = __smlad(e2, wo, __smlad(o, we, a1)); /* q1 w0 + q3 w2, q2 w1 + q4 w3 */
                else
                    a1 = __smlad(tvmp_sxtb16_ror8(x2), wo, __smlad(e2, we, a1)); /* q2 w0 + q4 w2, q3 w1 + q5 w3 */
            }
            uint32_t w46, w50, x; /* the taps left: (w4, w6), (w5, 0) (one tap: (w4, 0), (0, 0)) */
            TVMP_LDRD_POST(wp, w46, w50);
            if ((kw & 3) == 1) {
                if (d == 2) {
                    memcpy(&x, r + rx - 1, 4);
                    uint32_t t = tvmp_sxtb16_ror8(x); /* (q4, q6) */
                    a0 = __smlabb((int32_t)t, (int32_t)w46, a0);
                    a1 = __smlatb((int32_t)t, (int32_t)w46, a1);
                } else {
                    memcpy(&x, r + rx - 2, 4);
                    a0 = __smlatb((int32_t)__sxtb16(x), (int32_t)w46, a0);         /* q4 w4 */
                    a1 = __smlatb((int32_t)tvmp_sxtb16_ror8(x), (int32_t)w46, a1); /* q5 w4 */
                }
            } else {
                memcpy(&x, r + rx, 4);
                uint32_t e = __sxtb16(x), o = tvmp_sxtb16_ror8(x); /* (q4, q6), (q5, q7) */
                a0 = __smlabb((int32_t)o, (int32_t)w50, __smlad(e, w46, a0)); /* q4 w4 + q6 w6, q5 w5 */
                if (d == 1) {
                    a1 = __smlatb((int32_t)e, (int32_t)w50, __smlad(o, w46, a1)); /* q5 w4 + q7 w6, q6 w5 */
                } else {
                    uint32_t x1;
                    memcpy(&x1, r + rx + 1, 4); /* (q5, q6, q7, q8): the word at rx + 2 would read past the window */
                    a1 = __smlatb((int32_t)__sxtb16(x1), (int32_t)w50,
                                  __smlad(tvmp_sxtb16_ror8(x1), w46, a1)); /* q6 w4 + q8 w6, q7 w5 */
                }
            }
        }
        acc[0] = a0, acc[1] = a1;
        return;
    }
#endif
    for (int32_t ry = 0; ry < kh; ry++)
        for (int32_t rx = 0; rx < kw; rx++) {
            int32_t wv = w[ry * wy + tvmp_wide_pos(rx)];
            const int8_t *t = q + ry * sy + rx * sx;
            a0 += (int32_t)t[0] * wv, a1 += (int32_t)t[d] * wv;
        }
    acc[0] = a0, acc[1] = a1;
}

/* d[0..n) = s[0..n) as the forward byte loop it replaces does it, for any overlap: four bytes a load and a store
   (unaligned word accesses, which Cortex-M3 and later make in one instruction each), except where d is 1-3 bytes
   after s, where a word read would see bytes the byte loop had already overwritten: then byte by byte. A run of at
   least TVMP_COPY_LIBC bytes that does not overlap its source goes to the C library's memcpy (kernels round 37: a
   whole channel plane, copied by an in-place depthwise kernel; newlib's copies aligned words several a loop). */
#define TVMP_COPY_LIBC 64
#if defined(__GNUC__)
__attribute__((noinline, unused)) /* out of line: GCC's -Wrestrict would judge the call at each short run inlined */
#endif
static void tvmp_copy_libc(int8_t *d, const int8_t *s, int32_t n) { memcpy(d, s, (size_t)n); }
TVMP_INLINE void tvmp_copy_s8(int8_t *d, const int8_t *s, int32_t n) {
    uintptr_t du = (uintptr_t)d, su = (uintptr_t)s;
    if (n >= TVMP_COPY_LIBC && (du + (uint32_t)n <= su || su + (uint32_t)n <= du)) {
        tvmp_copy_libc(d, s, n);
        return;
    }
    if (du - su - 1u >= 3u) {
        for (; n >= 4; n -= 4, d += 4, s += 4) {
            uint32_t w;
            memcpy(&w, s, 4);
            memcpy(d, &w, 4);
        }
        if (n & 2) {
            uint16_t h;
            memcpy(&h, s, 2);
            memcpy(d, &h, 2);
            d += 2, s += 2;
        }
        if (n & 1) *d = *s;
        return;
    }
    for (; n > 0; n--) *d++ = *s++;
}

/* d[0..n) = v (a pad value): four bytes a store. */
TVMP_INLINE void tvmp_fill_s8(int8_t *d, int32_t v, int32_t n) {
    uint32_t w = (uint32_t)(uint8_t)v * 0x01010101u;
    for (; n >= 4; n -= 4, d += 4) memcpy(d, &w, 4);
    if (n & 2) memcpy(d, &w, 2), d += 2;
    if (n & 1) *d = (int8_t)v;
}

/* acc[j] += pad * (the sum of weight row j), rows weight rows ws bytes apart: a blocked border tap. */
TVMP_INLINE void tvmp_pad_rows(int32_t pad, const int8_t *w, int32_t ws, int32_t n, int32_t rows, int32_t *acc) {
    for (int32_t j = 0; j < rows; j++) acc[j] += pad * tvmp_sum_s8(w + j * ws, n);
}

/* tvmp_pad_rows on widened weights (codegen/wide_weights.py): rows of n int16 (n % 4 == 0, each row a whole
   number of groups of four, so the same weights in another order: the same sums). */
TVMP_INLINE void tvmp_pad_rows_w(int32_t pad, const int16_t *w, int32_t ws, int32_t n, int32_t rows, int32_t *acc) {
    for (int32_t j = 0; j < rows; j++) {
        int32_t sum = 0;
        for (int32_t i = 0; i < n; i++) sum += w[j * ws + i];
        acc[j] += pad * sum;
    }
}

/* acc[j] += s[j * ss]: a blocked border tap from the export's table of pad x weight-row sums (codegen/weight_sums.py). */
TVMP_INLINE void tvmp_pad_sums(const int32_t *s, int32_t ss, int32_t rows, int32_t *acc) {
    for (int32_t j = 0; j < rows; j++) acc[j] += s[j * ss];
}

/* One output channel of a 1x1 convolution along pairs of output pixels, its epilogue fused (codegen/channel_rows.py):
   out[(2 i + p) os] = int8(sat(requant_rbzr(bias + the dot of pixel p of pair i with the channel's n widened weights
   w, mult, right, zp))) for the pairs i < pairs, whose widened words (tvmp_widen_px2's, n per pair) follow one
   another from q. The loop runs over pixels inside one channel, so the channel's constants stay in registers for the
   whole row, and with n <= 8 its weights too (at most four words); longer rows (n = 12 or 16) take two pairs an
   iteration, each weight word loaded once for four pixels (round 24). The same sums and the same epilogue as the
   blocked kernels' calls (bias first, then the dot: integers). */
#define TVMP_ROW_MAX_REG_N 8
#if defined(__ARM_FEATURE_DSP)
/* LDRD at a constant byte offset (no write-back): with literal offsets GCC keeps one base register per array and
   no pointer copies, which it adds around TVMP_LDRD_POST in a fully unrolled body. */
#define TVMP_LDRD_AT(p, off, lo, hi) \
    __asm__("ldrd %0, %1, [%2, #%c3]" : "=r"(lo), "=r"(hi) : "r"(p), "n"(off) : "memory")
/* Group g (four channels) of two widened pairs, the second nb bytes on: s0..s3 += the four pixels' dots with the
   group's weights, loaded once. */
#define TVMP_ROW_QUAD_GROUP(g, nb)                                                                      \
    {                                                                                                   \
        uint32_t e, o, ye, yo;                                                                          \
        TVMP_LDRD_AT(w, 8 * (g), ye, yo);                                                               \
        TVMP_LDRD_AT(q, 16 * (g), e, o);                                                                \
        s0 = __smlad(o, yo, __smlad(e, ye, s0));                                                        \
        TVMP_LDRD_AT(q, 16 * (g) + 8, e, o);                                                            \
        s1 = __smlad(o, yo, __smlad(e, ye, s1));                                                        \
        TVMP_LDRD_AT(q, (nb) + 16 * (g), e, o);                                                         \
        s2 = __smlad(o, yo, __smlad(e, ye, s2));                                                        \
        TVMP_LDRD_AT(q, (nb) + 16 * (g) + 8, e, o);                                                     \
        s3 = __smlad(o, yo, __smlad(e, ye, s3));                                                        \
    }
/* Two pairs an iteration along the row for n (a literal: 12 or 16) widened channels, the epilogue of each output
   fused; an odd last pair is left to the one-pair loop. */
#define TVMP_ROW_QUADS(N)                                                                               \
    for (; pairs >= 2; pairs -= 2, out += 4 * os, q += 2 * (N)) {                                       \
        int32_t s0 = bias, s1 = bias, s2 = bias, s3 = bias;                                             \
        TVMP_ROW_QUAD_GROUP(0, 4 * (N))                                                                 \
        TVMP_ROW_QUAD_GROUP(1, 4 * (N))                                                                 \
        TVMP_ROW_QUAD_GROUP(2, 4 * (N))                                                                 \
        if ((N) == 16) TVMP_ROW_QUAD_GROUP(3, 4 * (N))                                                  \
        out[0] = (int8_t)tvmp_sat_s8(tvmp_requant_rbzr(s0, mult, right, zp));                           \
        out[os] = (int8_t)tvmp_sat_s8(tvmp_requant_rbzr(s1, mult, right, zp));                          \
        out[2 * os] = (int8_t)tvmp_sat_s8(tvmp_requant_rbzr(s2, mult, right, zp));                      \
        out[3 * os] = (int8_t)tvmp_sat_s8(tvmp_requant_rbzr(s3, mult, right, zp));                      \
    }
TVMP_INLINE void tvmp_row_q15w_px2(const uint32_t *q, int32_t pairs, const int16_t *w, int32_t n, int32_t bias,
                                   int32_t mult, int32_t right, int32_t zp, int8_t *out, int32_t os) {
    if (n <= TVMP_ROW_MAX_REG_N) {
        /* the weights doubled once a row (SADD16: each halfword 2 w, |2 w| <= 256) and the bias with them, so the
           sums come out doubled and the epilogue skips its shift (tvmp_requant_rbzr2: round 38) */
        uint32_t y[TVMP_ROW_MAX_REG_N / 2];
        for (int32_t g = 0; g < n / 2; g++) {
            memcpy(&y[g], w + 2 * g, 4);
            y[g] = __sadd16(y[g], y[g]);
        }
        int32_t bias2 = 2 * bias;
        for (; pairs > 0; pairs--, out += 2 * os) {
            int32_t s0 = bias2, s1 = bias2;
            for (int32_t g = 0; g < n / 4; g++) {
                uint32_t e0, o0, e1, o1;
                TVMP_LDRD_POST(q, e0, o0);
                TVMP_LDRD_POST(q, e1, o1);
                s0 = __smlad(o0, y[2 * g + 1], __smlad(e0, y[2 * g], s0));
                s1 = __smlad(o1, y[2 * g + 1], __smlad(e1, y[2 * g], s1));
            }
            out[0] = (int8_t)tvmp_sat_s8(tvmp_requant_rbzr2(s0, mult, right, zp));
            out[os] = (int8_t)tvmp_sat_s8(tvmp_requant_rbzr2(s1, mult, right, zp));
        }
        return;
    }
    if (n == 16) TVMP_ROW_QUADS(16)
    else if (n == 12) TVMP_ROW_QUADS(12)
    for (; pairs > 0; pairs--, out += 2 * os) {
        int32_t s0 = bias, s1 = bias;
        const int16_t *p = w;
        for (int32_t g = 0; g < n / 4; g++) {
            uint32_t e0, o0, e1, o1, ye, yo;
            TVMP_LDRD_POST(q, e0, o0);
            TVMP_LDRD_POST(q, e1, o1);
            TVMP_LDRD_POST(p, ye, yo);
            s0 = __smlad(o0, yo, __smlad(e0, ye, s0));
            s1 = __smlad(o1, yo, __smlad(e1, ye, s1));
        }
        out[0] = (int8_t)tvmp_sat_s8(tvmp_requant_rbzr(s0, mult, right, zp));
        out[os] = (int8_t)tvmp_sat_s8(tvmp_requant_rbzr(s1, mult, right, zp));
    }
}
#else
TVMP_INLINE void tvmp_row_q15w_px2(const uint32_t *q, int32_t pairs, const int16_t *w, int32_t n, int32_t bias,
                                   int32_t mult, int32_t right, int32_t zp, int8_t *out, int32_t os) {
    for (int32_t i = 0; i < pairs; i++, q += n)
        for (int32_t p = 0; p < 2; p++) {
            int32_t s = bias;
            for (int32_t g = 0; g < n; g += 4) {
                uint32_t e = q[g + 2 * p], o = q[g + 2 * p + 1];
                s += tvmp_dot4_wide(w + g, (int16_t)(e & 0xffffu), (int16_t)(o & 0xffffu), (int32_t)e >> 16, (int32_t)o >> 16);
            }
            out[(2 * i + p) * os] = (int8_t)tvmp_sat_s8(tvmp_requant_rbzr(s, mult, right, zp));
        }
}
#endif

#endif
