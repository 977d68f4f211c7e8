/* QEMU mps2-an386 (Cortex-M4) / mps2-an500 (Cortex-M7), standing in for a board: console and exit over
   semihosting, and an exact instruction counter from the CMSDK timers under `-icount shift=S`.

   With -icount shift=S every instruction advances QEMU's virtual clock by exactly 2^S ns, and the timers
   count that clock at 25 MHz (40 ns a tick). Timer 0 (CMSDK APB timer, 0x40000000) gives fine ticks modulo
   2^32; the dual timer's first counter (0x40002000, prescaler /256) gives coarse ticks that tell how often
   the fine one wrapped. With S >= 7 an instruction lasts 128 ns > 3 ticks, so round(ticks * 40 / 2^S) is
   the exact number of instructions between two readings. */
#include "mmio.h"
#include "tvmp_board.h"

#ifndef TVMP_ICOUNT_SHIFT
#define TVMP_ICOUNT_SHIFT 7
#endif
#define TIMER0_CTRL   0x40000000u
#define TIMER0_VALUE  0x40000004u
#define TIMER0_RELOAD 0x40000008u
#define DUAL1_LOAD    0x40002000u
#define DUAL1_VALUE   0x40002004u
#define DUAL1_CONTROL 0x40002008u
#define NS_PER_TICK   40u

const char tvmp_count_unit[] = "instructions";
const char tvmp_runner[] = "emulator";

static uint32_t semihost(uint32_t op, const void *arg) {
    register uint32_t r0 __asm("r0") = op;
    register const void *r1 __asm("r1") = arg;
    __asm volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void tvmp_board_init(void) {
    REG32(TIMER0_CTRL) = 0;
    REG32(TIMER0_RELOAD) = 0xFFFFFFFFu;
    REG32(TIMER0_VALUE) = 0xFFFFFFFFu;
    REG32(TIMER0_CTRL) = 1u;                        /* enable, no interrupt */
    REG32(DUAL1_CONTROL) = 0;
    REG32(DUAL1_LOAD) = 0xFFFFFFFFu;
    REG32(DUAL1_CONTROL) = (1u << 7) | (2u << 2) | (1u << 1);  /* enable, free-running, /256, 32-bit */
}

void tvmp_console_write(const char *s, uint32_t n) {
    char buf[128];
    while (n) {
        uint32_t k = n < sizeof buf - 1 ? n : (uint32_t)sizeof buf - 1;
        for (uint32_t i = 0; i < k; i++) buf[i] = s[i];
        buf[k] = 0;
        semihost(0x04u, buf);                        /* SYS_WRITE0 */
        s += k;
        n -= k;
    }
}

/* Fine ticks since start, as 64 bits: the coarse counter fixes how many times the fine one wrapped. */
uint64_t tvmp_counter_now(void) {
    uint32_t fine = 0xFFFFFFFFu - REG32(TIMER0_VALUE);
    uint32_t coarse = 0xFFFFFFFFu - REG32(DUAL1_VALUE);
    uint64_t approx = (uint64_t)coarse * 256u;       /* within 256 ticks of the truth */
    uint64_t wraps = approx >> 32;
    uint64_t best = (wraps << 32) | fine;
    /* choose the wrap count that puts the fine value nearest the coarse estimate */
    if (best > approx + (1ull << 31)) best -= 1ull << 32;
    else if (best + (1ull << 31) < approx) best += 1ull << 32;
    return best;
}

uint64_t tvmp_counter_to_count(uint64_t ticks) {
    return (ticks * NS_PER_TICK + (1ull << (TVMP_ICOUNT_SHIFT - 1))) >> TVMP_ICOUNT_SHIFT;
}

void tvmp_board_exit(int status) {
    uint32_t block[2] = {0x20026u, (uint32_t)status};  /* ADP_Stopped_ApplicationExit, exit code */
    semihost(0x20u, block);                              /* SYS_EXIT_EXTENDED */
    for (;;) {}
}
