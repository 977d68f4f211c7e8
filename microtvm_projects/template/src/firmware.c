/* tvm-patch firmware: one inference of the exported network on a seeded input, reported over the console in
   the line protocol TVMP1 (docs/protocol.md): BEGIN, [KERNEL...], TOTAL, STACK, OUTPUT + DATA per output, END. */
#include <stdint.h>
#include <string.h>
#include "tvmp_board.h"
#include "tvmp_model.h"
#include "tvmp_io.h"
#include "tvmp_print.h"
#include "tvmp_profile.h"

#ifndef TVMP_BOARD_KEY
#define TVMP_BOARD_KEY "unknown"
#endif
#ifndef TVMP_MODEL_ID
#define TVMP_MODEL_ID "0000000000000000"
#endif
#ifndef TVMP_OPT
#define TVMP_OPT "O3"
#endif
#define STACK_PAINT 0xC5C5C5C5u

extern uint32_t _sstack, _estack;

static const char HEX[] = "0123456789abcdef";

/* zlib's CRC-32 (reflected polynomial 0xEDB88320), bit by bit: small, and only run after the timing */
static uint32_t crc32(const uint8_t *p, uint32_t n) {
    uint32_t c = 0xFFFFFFFFu;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return ~c;
}

void tvmp_report_fault(const char *kind, uint32_t pc, uint32_t cfsr) {
    tvmp_put("\nTVMP1 FAULT kind="); tvmp_put(kind);
    tvmp_put(" pc=0x"); tvmp_put_hex32(pc);
    tvmp_put(" cfsr=0x"); tvmp_put_hex32(cfsr); tvmp_put("\n");
    tvmp_board_exit(3);
}

/* ------------------------------------------------------------------ per-kernel counts (profile builds) */
#if TVMP_PROFILE
static uint64_t prof_start;
static uint64_t prof_overhead;
static uint64_t prof_count[TVMP_NUM_CALLS];
static const char *prof_name[TVMP_NUM_CALLS];

void tvmp_prof_begin(uint32_t index) { (void)index; prof_start = tvmp_counter_now(); }

void tvmp_prof_end(uint32_t index, const char *name) {
    uint64_t ticks = tvmp_counter_now() - prof_start;
    uint64_t n = tvmp_counter_to_count(ticks);
    prof_count[index] = n > prof_overhead ? n - prof_overhead : 0u;
    prof_name[index] = name;
}
#endif

/* ------------------------------------------------------------------ the run */
static void paint_stack(void) {
    /* everything below the current stack pointer, less a margin for the calls below, gets the pattern */
    uint32_t *sp;
    __asm volatile("mov %0, sp" : "=r"(sp));
    for (uint32_t *p = &_sstack; p < sp - 16; p++) *p = STACK_PAINT;
}

static uint32_t stack_used(void) {
    uint32_t *p = &_sstack;
    while (p < &_estack && *p == STACK_PAINT) p++;
    return (uint32_t)((uint8_t *)&_estack - (uint8_t *)p);
}

static void put_output(uint32_t index, const uint8_t *data, uint32_t n) {
    tvmp_put("TVMP1 OUTPUT index="); tvmp_put_u64(index);
    tvmp_put(" bytes="); tvmp_put_u64(n);
    tvmp_put(" crc32="); tvmp_put_hex32(crc32(data, n)); tvmp_put("\n");
    for (uint32_t off = 0; off < n; off += 32u) {
        char hex[65];
        uint32_t k = n - off < 32u ? n - off : 32u;
        for (uint32_t j = 0; j < k; j++) {
            hex[2 * j] = HEX[data[off + j] >> 4];
            hex[2 * j + 1] = HEX[data[off + j] & 15u];
        }
        hex[2 * k] = 0;
        tvmp_put("TVMP1 DATA index="); tvmp_put_u64(index);
        tvmp_put(" offset="); tvmp_put_u64(off);
        tvmp_put(" hex="); tvmp_put(hex); tvmp_put("\n");
    }
}

/* The measured interval's own cost (two counter reads), subtracted from every count. */
static uint64_t counter_overhead(void) {
    uint64_t t0 = tvmp_counter_now();
    uint64_t t1 = tvmp_counter_now();
    return tvmp_counter_to_count(t1 - t0);
}

int main(void) {
    tvmp_board_init();
    tvmp_put("\nTVMP1 BEGIN board=" TVMP_BOARD_KEY " runner="); tvmp_put(tvmp_runner);
    tvmp_put(" model=" TVMP_MODEL_ID " arena="); tvmp_put_u64(TVMP_ARENA_BYTES);
    tvmp_put(" opt=" TVMP_OPT "\n");

    uint64_t overhead = counter_overhead();
#if TVMP_PROFILE
    prof_overhead = overhead;
#endif
    paint_stack();
    uint64_t t0 = tvmp_counter_now();
    int rc = TVMP_RUN_CALL;
    uint64_t t1 = tvmp_counter_now();
    uint64_t total = tvmp_counter_to_count(t1 - t0);
    total = total > overhead ? total - overhead : 0u;
    uint32_t used = stack_used();

#if TVMP_PROFILE
    for (uint32_t i = 0; i < TVMP_NUM_CALLS; i++) {
        tvmp_put("TVMP1 KERNEL index="); tvmp_put_u64(i);
        tvmp_put(" name="); tvmp_put(prof_name[i] ? prof_name[i] : "unknown");
        tvmp_put(" count="); tvmp_put_u64(prof_count[i]); tvmp_put("\n");
    }
#endif
    tvmp_put("TVMP1 TOTAL unit="); tvmp_put(tvmp_count_unit); tvmp_put(" count="); tvmp_put_u64(total); tvmp_put("\n");
    tvmp_put("TVMP1 STACK used="); tvmp_put_u64(used);
    tvmp_put(" size="); tvmp_put_u64((uint32_t)((uint8_t *)&_estack - (uint8_t *)&_sstack)); tvmp_put("\n");
    TVMP_PUT_OUTPUTS;
    tvmp_put("TVMP1 END status="); tvmp_put_i64(rc); tvmp_put("\n");
    return rc;
}
