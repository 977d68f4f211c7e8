/* tvm-patch firmware: what each board file (board_<key>.c, board_qemu.c) provides to firmware.c. */
#ifndef TVMP_BOARD_H
#define TVMP_BOARD_H
#include <stdint.h>

/* Clocks to the board's maximum, caches on (Cortex-M7), the console, the counter. */
void tvmp_board_init(void);
/* Write n bytes to the console (UART on a board, semihosting in QEMU); blocks until sent. */
void tvmp_console_write(const char *s, uint32_t n);
/* A free-running counter: cycles (DWT CYCCNT) on a board, emulated-time ticks in QEMU. */
uint64_t tvmp_counter_now(void);
/* Ticks between two readings (later - earlier) -> the unit below (instructions in QEMU, cycles on a board). */
uint64_t tvmp_counter_to_count(uint64_t ticks);
extern const char tvmp_count_unit[];
extern const char tvmp_runner[];
/* The end of a run: QEMU exits with the status (semihosting); a board idles. */
void tvmp_board_exit(int status) __attribute__((noreturn));

#endif
