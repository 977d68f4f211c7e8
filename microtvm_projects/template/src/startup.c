/* Start-up: the vector table, the reset handler (copy .data, zero .bss, FPU on, main), fault reporting. */
#include <stdint.h>
#include <string.h>
#include "mmio.h"
#include "tvmp_board.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
int main(void);
void tvmp_report_fault(const char *kind, uint32_t pc, uint32_t cfsr);

void Reset_Handler(void) {
    /* .data from Flash, .bss zeroed: plain loops, the C library is not ready before this */
    uint32_t *src = &_sidata, *dst = &_sdata;
    while (dst < &_edata) *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss; dst++) *dst = 0;
    REG32(SCB_CPACR) |= 0xFu << 20;    /* CP10, CP11: full access to the FPU */
    tvmp_dsb();
    tvmp_isb();
    int status = main();
    tvmp_board_exit(status);
}

/* Faults: a naked handler hands the stacked exception frame (MSP or PSP, per EXC_RETURN) and the fault kind
   to tvmp_fault_entry, which reports the faulting PC (frame word 6) and the CFSR on the console. */
static const char *const fault_kinds[] = {"hardfault", "memmanage", "busfault", "usagefault"};

void tvmp_fault_entry(const uint32_t *frame, uint32_t kind) {
    tvmp_report_fault(fault_kinds[kind & 3u], frame ? frame[6] : 0u, REG32(SCB_CFSR));
}

#define FAULT_HANDLER(fn, kind)                                                                 \
    __attribute__((naked)) void fn(void) {                                                    \
        __asm volatile("tst lr, #4\n\tite eq\n\tmrseq r0, msp\n\tmrsne r0, psp\n\t"             \
                       "movs r1, #" #kind "\n\tb tvmp_fault_entry\n");                          \
    }

FAULT_HANDLER(HardFault_Handler, 0)
FAULT_HANDLER(MemManage_Handler, 1)
FAULT_HANDLER(BusFault_Handler, 2)
FAULT_HANDLER(UsageFault_Handler, 3)

static void Default_Handler(void) { tvmp_report_fault("hardfault", 0u, REG32(SCB_CFSR)); }

/* Core exceptions only: the firmware uses no interrupt. */
__attribute__((section(".isr_vector"), used))
static void (*const vectors[16])(void) = {
    (void (*)(void))(&_estack),
    Reset_Handler,
    Default_Handler,        /* NMI */
    HardFault_Handler,
    MemManage_Handler,
    BusFault_Handler,
    UsageFault_Handler,
    0, 0, 0, 0,
    Default_Handler,        /* SVCall */
    Default_Handler,        /* debug monitor */
    0,
    Default_Handler,        /* PendSV */
    Default_Handler,        /* SysTick */
};
