/* Cortex-M pieces shared by the board files: the DWT cycle counter and the Cortex-M7 L1 caches. */
#include "mmio.h"

void tvmp_dwt_start(void) {
    REG32(DEMCR) |= 1u << 24;          /* TRCENA: enable the DWT */
    REG32(DWT_LAR) = 0xC5ACCE55u;      /* unlock (Cortex-M7 keeps the DWT locked after reset) */
    REG32(DWT_CYCCNT) = 0;
    REG32(DWT_CTRL) |= 1u;             /* CYCCNTENA */
}

/* Invalidate then enable the instruction and data caches (ARMv7-M: ICIALLU, DCISW by set/way, CCR.IC/DC). */
void tvmp_cm7_caches_on(void) {
    tvmp_dsb();
    tvmp_isb();
    REG32(SCB_ICIALLU) = 0;
    tvmp_dsb();
    tvmp_isb();
    REG32(SCB_CCR) |= 1u << 17;        /* IC */
    tvmp_dsb();
    tvmp_isb();

    REG32(SCB_CSSELR) = 0;             /* level 1 data cache */
    tvmp_dsb();
    uint32_t ccsidr = REG32(SCB_CCSIDR);
    uint32_t sets = ((ccsidr >> 13) & 0x7FFFu) + 1u;
    uint32_t ways = ((ccsidr >> 3) & 0x3FFu) + 1u;
    uint32_t line_shift = (ccsidr & 7u) + 4u;          /* log2(bytes per line) */
    uint32_t way_shift = (uint32_t)__builtin_clz((ways - 1u) | 1u);  /* ways are in the top bits */
    if (ways == 1u) way_shift = 0;
    for (uint32_t s = 0; s < sets; s++)
        for (uint32_t w = 0; w < ways; w++)
            REG32(SCB_DCISW) = (s << line_shift) | (w << way_shift);
    tvmp_dsb();
    REG32(SCB_CCR) |= 1u << 16;        /* DC */
    tvmp_dsb();
    tvmp_isb();
}
