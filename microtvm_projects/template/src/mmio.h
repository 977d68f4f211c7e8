/* Register access for the board files: no CMSIS or vendor header, addresses from the reference manuals. */
#ifndef TVMP_MMIO_H
#define TVMP_MMIO_H
#include <stdint.h>

#define REG32(addr) (*(volatile uint32_t *)(uintptr_t)(addr))

static inline void tvmp_dsb(void) { __asm volatile("dsb 0xF" ::: "memory"); }
static inline void tvmp_isb(void) { __asm volatile("isb 0xF" ::: "memory"); }

/* Cortex-M system control space (ARMv7-M Architecture Reference Manual) */
#define SCB_VTOR   0xE000ED08u
#define SCB_CCR    0xE000ED14u
#define SCB_CFSR   0xE000ED28u
#define SCB_CPACR  0xE000ED88u
#define SCB_CCSIDR 0xE000ED80u
#define SCB_CSSELR 0xE000ED84u
#define SCB_ICIALLU 0xE000EF50u
#define SCB_DCISW  0xE000EF60u
#define DEMCR      0xE000EDFCu
#define DWT_CTRL   0xE0001000u
#define DWT_CYCCNT 0xE0001004u
#define DWT_LAR    0xE0001FB0u

/* Busy-wait until (REG32(addr) & mask) == want, at most `spins` reads; returns 0 on success. */
static inline int tvmp_wait(uint32_t addr, uint32_t mask, uint32_t want, uint32_t spins) {
    while (spins--) {
        if ((REG32(addr) & mask) == want) return 0;
    }
    return -1;
}

/* Shared by the board files: full-speed floating point, the DWT cycle counter, the Cortex-M7 caches. */
void tvmp_dwt_start(void);
void tvmp_cm7_caches_on(void);
#endif
