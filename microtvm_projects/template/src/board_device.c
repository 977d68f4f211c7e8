/* What the three STM32 boards share: the DWT cycle counter, the console over the board's UART, idling at
   the end. The board file (board_<key>.c) provides the clock and UART set-up and tvmp_uart_putc. */
#include "mmio.h"
#include "tvmp_board.h"

void tvmp_uart_putc(char c);

const char tvmp_count_unit[] = "cycles";
const char tvmp_runner[] = "device";

void tvmp_console_write(const char *s, uint32_t n) {
    while (n--) {
        if (*s == '\n') tvmp_uart_putc('\r');
        tvmp_uart_putc(*s++);
    }
}

uint64_t tvmp_counter_now(void) { return REG32(DWT_CYCCNT); }

/* CYCCNT is 32 bits: an interval is exact up to 2^32 cycles (8.9 s at 480 MHz, 42.9 s at 100 MHz). */
uint64_t tvmp_counter_to_count(uint64_t ticks) { return (uint32_t)ticks; }

void tvmp_board_exit(int status) {
    (void)status;
    for (;;) __asm volatile("wfi");
}
