/* NUCLEO-H743ZI (STM32H743ZI rev V, Cortex-M7): 480 MHz from the 64 MHz HSI through PLL1 at voltage scale 0;
   16 kB I/D caches on; console on USART3 (PD8 TX / PD9 RX, AF7), the ST-LINK virtual COM port, 115200 8N1.
   Facts from RM0433 and UM2407. */
#include "mmio.h"
#include "tvmp_board.h"

#define RCC 0x58024400u
#define RCC_CR (RCC + 0x00u)
#define RCC_CFGR (RCC + 0x10u)
#define RCC_D1CFGR (RCC + 0x18u)
#define RCC_D2CFGR (RCC + 0x1Cu)
#define RCC_D3CFGR (RCC + 0x20u)
#define RCC_PLLCKSELR (RCC + 0x28u)
#define RCC_PLLCFGR (RCC + 0x2Cu)
#define RCC_PLL1DIVR (RCC + 0x30u)
#define RCC_AHB4ENR (RCC + 0xE0u)
#define RCC_APB1LENR (RCC + 0xE8u)
#define RCC_APB4ENR (RCC + 0xF4u)
#define PWR_CR3 0x5802480Cu
#define PWR_D3CR 0x58024818u
#define PWR_CSR1 0x58024804u
#define SYSCFG_PWRCR 0x5800042Cu
#define FLASH_ACR 0x52002000u
#define GPIOD 0x58020C00u
#define USART3 0x40004800u
#define USART_CR1 (USART3 + 0x00u)
#define USART_BRR (USART3 + 0x0Cu)
#define USART_ISR (USART3 + 0x1Cu)
#define USART_TDR (USART3 + 0x28u)
#define PCLK1_HZ 120000000u
#define BAUD 115200u
#define SPINS 1000000u

static void clock_480mhz(void) {
    /* supply from the LDO, then VOS1, then over-drive (VOS0) through SYSCFG */
    REG32(PWR_CR3) = (REG32(PWR_CR3) & ~7u) | (1u << 1);          /* LDOEN, no bypass, no SMPS */
    tvmp_wait(PWR_CSR1, 1u << 13, 1u << 13, SPINS);               /* ACTVOSRDY */
    REG32(PWR_D3CR) = (REG32(PWR_D3CR) & ~(3u << 14)) | (3u << 14);  /* VOS1 */
    tvmp_wait(PWR_D3CR, 1u << 13, 1u << 13, SPINS);               /* VOSRDY */
    REG32(RCC_APB4ENR) |= 1u << 1;                                /* SYSCFGEN */
    REG32(SYSCFG_PWRCR) |= 1u;                                    /* ODEN: VOS0 */
    tvmp_wait(PWR_D3CR, 1u << 13, 1u << 13, SPINS);               /* VOSRDY */
    /* PLL1: HSI 64 MHz / M 16 = 4 MHz (range 4-8 MHz), x N 240 = 960 MHz wide VCO, / P 2 = 480 MHz */
    REG32(RCC_PLLCKSELR) = (REG32(RCC_PLLCKSELR) & ~((0x3Fu << 4) | 3u)) | (16u << 4);  /* PLLSRC HSI, DIVM1 */
    REG32(RCC_PLLCFGR) = (REG32(RCC_PLLCFGR) & ~0xFu) | (2u << 2) | (1u << 16);       /* PLL1RGE, DIVP1EN */
    REG32(RCC_PLL1DIVR) = (240u - 1u) | ((2u - 1u) << 9) | ((4u - 1u) << 16) | ((2u - 1u) << 24);
    REG32(RCC_CR) |= 1u << 24;                                    /* PLL1ON */
    tvmp_wait(RCC_CR, 1u << 25, 1u << 25, SPINS);                 /* PLL1RDY */
    /* 4 wait states, programming delay 2 at 480 MHz (VOS0) */
    REG32(FLASH_ACR) = 4u | (2u << 4);
    tvmp_wait(FLASH_ACR, 0x3Fu, 4u | (2u << 4), SPINS);
    /* CPU /1 = 480, AHB /2 = 240, APB3 /2, APB1 /2 = 120, APB2 /2, APB4 /2 */
    REG32(RCC_D1CFGR) = (8u << 0) | (4u << 4);
    REG32(RCC_D2CFGR) = (4u << 4) | (4u << 8);
    REG32(RCC_D3CFGR) = 4u << 4;
    REG32(RCC_CFGR) = (REG32(RCC_CFGR) & ~7u) | 3u;               /* SW = PLL1 */
    tvmp_wait(RCC_CFGR, 7u << 3, 3u << 3, SPINS);                 /* SWS = PLL1 */
}

static void console_usart3(void) {
    REG32(RCC_AHB4ENR) |= 1u << 3;                                /* GPIODEN */
    REG32(RCC_APB1LENR) |= 1u << 18;                              /* USART3EN; kernel clock = PCLK1 */
    REG32(GPIOD + 0x00u) = (REG32(GPIOD + 0x00u) & ~(0xFu << 16)) | (0xAu << 16);  /* PD8, PD9: AF */
    REG32(GPIOD + 0x24u) = (REG32(GPIOD + 0x24u) & ~0xFFu) | 0x77u;               /* AF7 */
    REG32(USART_BRR) = (PCLK1_HZ + BAUD / 2u) / BAUD;
    REG32(USART_CR1) = (1u << 3) | 1u;                            /* TE, UE */
}

void tvmp_uart_putc(char c) {
    tvmp_wait(USART_ISR, 1u << 7, 1u << 7, SPINS);                /* TXFNF / TXE */
    REG32(USART_TDR) = (uint8_t)c;
}

void tvmp_board_init(void) {
    REG32(SCB_VTOR) = 0x08000000u;
    clock_480mhz();
    tvmp_cm7_caches_on();
    console_usart3();
    tvmp_dwt_start();
}
