/* 32F746GDISCOVERY (STM32F746NG, Cortex-M7): 216 MHz from the 16 MHz HSI through the PLL with over-drive;
   4 kB I/D caches on; console on USART1 (PA9 TX / PB7 RX, AF7), the ST-LINK virtual COM port, 115200 8N1.
   Facts from RM0385 and UM1907. */
#include "mmio.h"
#include "tvmp_board.h"

#define RCC 0x40023800u
#define RCC_CR (RCC + 0x00u)
#define RCC_PLLCFGR (RCC + 0x04u)
#define RCC_CFGR (RCC + 0x08u)
#define RCC_AHB1ENR (RCC + 0x30u)
#define RCC_APB1ENR (RCC + 0x40u)
#define RCC_APB2ENR (RCC + 0x44u)
#define PWR_CR1 0x40007000u
#define PWR_CSR1 0x40007004u
#define FLASH_ACR 0x40023C00u
#define GPIOA 0x40020000u
#define GPIOB 0x40020400u
#define USART1 0x40011000u
#define USART_CR1 (USART1 + 0x00u)
#define USART_BRR (USART1 + 0x0Cu)
#define USART_ISR (USART1 + 0x1Cu)
#define USART_TDR (USART1 + 0x28u)
#define APB2_HZ 108000000u
#define BAUD 115200u
#define SPINS 1000000u

static void clock_216mhz(void) {
    REG32(RCC_APB1ENR) |= 1u << 28;                      /* PWREN */
    REG32(PWR_CR1) = (REG32(PWR_CR1) & ~(3u << 14)) | (3u << 14);  /* VOS: scale 1 */
    /* HSI 16 MHz / M 8 = 2 MHz; x N 216 = 432 MHz VCO; / P 2 = 216 MHz SYSCLK; / Q 9 = 48 MHz */
    REG32(RCC_PLLCFGR) = 8u | (216u << 6) | (0u << 16) | (0u << 22) | (9u << 24);
    REG32(RCC_CR) |= 1u << 24;                           /* PLLON */
    tvmp_wait(RCC_CR, 1u << 25, 1u << 25, SPINS);        /* PLLRDY */
    REG32(PWR_CR1) |= 1u << 16;                          /* ODEN: over-drive, needed above 180 MHz */
    tvmp_wait(PWR_CSR1, 1u << 16, 1u << 16, SPINS);      /* ODRDY */
    REG32(PWR_CR1) |= 1u << 17;                          /* ODSWEN */
    tvmp_wait(PWR_CSR1, 1u << 17, 1u << 17, SPINS);      /* ODSWRDY */
    /* 7 wait states at 210-216 MHz and 2.7-3.6 V; ART accelerator and prefetch on */
    REG32(FLASH_ACR) = 7u | (1u << 8) | (1u << 9);
    tvmp_wait(FLASH_ACR, 0xFu, 7u, SPINS);
    /* AHB /1, APB1 /4 (54 MHz max), APB2 /2 (108 MHz max) */
    REG32(RCC_CFGR) = (REG32(RCC_CFGR) & ~0xFCF0u) | (5u << 10) | (4u << 13);
    REG32(RCC_CFGR) = (REG32(RCC_CFGR) & ~3u) | 2u;      /* SW = PLL */
    tvmp_wait(RCC_CFGR, 3u << 2, 2u << 2, SPINS);        /* SWS = PLL */
}

static void console_usart1(void) {
    REG32(RCC_AHB1ENR) |= (1u << 0) | (1u << 1);         /* GPIOAEN, GPIOBEN */
    REG32(RCC_APB2ENR) |= 1u << 4;                       /* USART1EN */
    REG32(GPIOA + 0x00u) = (REG32(GPIOA + 0x00u) & ~(3u << 18)) | (2u << 18);   /* PA9: AF */
    REG32(GPIOA + 0x24u) = (REG32(GPIOA + 0x24u) & ~(0xFu << 4)) | (7u << 4);   /* AF7 */
    REG32(GPIOB + 0x00u) = (REG32(GPIOB + 0x00u) & ~(3u << 14)) | (2u << 14);   /* PB7: AF */
    REG32(GPIOB + 0x20u) = (REG32(GPIOB + 0x20u) & ~(0xFu << 28)) | (7u << 28); /* AF7 */
    REG32(USART_BRR) = (APB2_HZ + BAUD / 2u) / BAUD;
    REG32(USART_CR1) = (1u << 3) | 1u;                   /* TE, UE */
}

void tvmp_uart_putc(char c) {
    tvmp_wait(USART_ISR, 1u << 7, 1u << 7, SPINS);       /* TXE */
    REG32(USART_TDR) = (uint8_t)c;
}

void tvmp_board_init(void) {
    REG32(SCB_VTOR) = 0x08000000u;
    clock_216mhz();
    tvmp_cm7_caches_on();
    console_usart1();
    tvmp_dwt_start();
}
