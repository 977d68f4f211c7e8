/* Console output without printf (see tvmp_print.h): the C library's printf would cost Flash and a heap. */
#include <string.h>
#include "tvmp_board.h"
#include "tvmp_print.h"

void tvmp_put(const char *s) { tvmp_console_write(s, (uint32_t)strlen(s)); }

void tvmp_put_u64(uint64_t v) {
    char buf[21];
    int i = 20;
    buf[i] = 0;
    do { buf[--i] = (char)('0' + (int)(v % 10u)); v /= 10u; } while (v);
    tvmp_put(buf + i);
}

void tvmp_put_i64(int64_t v) {
    if (v < 0) {
        tvmp_put("-");
        tvmp_put_u64((uint64_t)(-(v + 1)) + 1u);
    } else {
        tvmp_put_u64((uint64_t)v);
    }
}

void tvmp_put_hex32(uint32_t v) {
    static const char hex[] = "0123456789abcdef";
    char buf[9];
    for (int i = 7; i >= 0; i--) { buf[i] = hex[v & 15u]; v >>= 4; }
    buf[8] = 0;
    tvmp_put(buf);
}
