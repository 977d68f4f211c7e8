/* Console output without printf: strings and integers, for the firmware and the test firmwares. */
#ifndef TVMP_PRINT_H
#define TVMP_PRINT_H
#include <stdint.h>

void tvmp_put(const char *s);
void tvmp_put_u64(uint64_t v);
void tvmp_put_i64(int64_t v);
void tvmp_put_hex32(uint32_t v); /* eight lowercase hex digits */

#endif
