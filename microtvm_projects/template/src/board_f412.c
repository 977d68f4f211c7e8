/* NUCLEO-F412ZG (STM32F412ZG, Cortex-M4F): 100 MHz from the 16 MHz HSI through the PLL; console on USART3
   (PD8 TX / PD9 RX, AF7), the ST-LINK virtual COM port, 115200 8N1. Facts from RM0402 and UM1974. */
#include "mmio.h"
#include "tvmp_board.h"

#define RCC 0x40023800u
#define RCC_CR (RCC + 0x00u)
#define RCC_PLLCFGR (RCC + 0x04u)
#define RCC_CFGR (RCC + 0x08u)
#define RCC_AHB1ENR (RCC + 0x30u)
#define RCC_APB1ENR (RCC + 0x40u)
#define PWR_CR 0x40007000u
#define FLASH_ACR 0x40023C00u
#define GPIOD 0x40020C00u
#define USART3 0x40004800u
#define USART_SR (USART3 + 0x00u)
#define USART_DR (USART3 + 0x04u)
#define USART_BRR (USART3 + 0x08u)
#define USART_CR1 (USART3 + 0x0Cu)
#define APB1_HZ 50000000u
#define BAUD 115200u
#define SPINS 1000000u

static void clock_100mhz(void) {
    REG32(RCC_APB1ENR) |= 1u << 28;                      /* PWREN */
    REG32(PWR_CR) = (REG32(PWR_CR) & ~(3u << 14)) | (3u << 14);  /* VOS: scale 1 (up to 100 MHz) */
    /* HSI 16 MHz / M 8 = 2 MHz; x N 100 = 200 MHz VCO; / P 2 = 100 MHz SYSCLK; / Q 4 = 50 MHz */
    REG32(RCC_PLLCFGR) = 8u | (100u << 6) | (0u << 16) | (0u << 22) | (4u << 24) | (2u << 28);
    REG32(RCC_CR) |= 1u << 24;                           /* PLLON */
    tvmp_wait(RCC_CR, 1u << 25, 1u << 25, SPINS);        /* PLLRDY */
    /* 3 wait states at 90-100 MHz and 2.7-3.6 V; prefetch, instruction and data caches (ART) on */
    REG32(FLASH_ACR) = 3u | (1u << 8) | (1u << 9) | (1u << 10);
    tvmp_wait(FLASH_ACR, 0xFu, 3u, SPINS);
    /* AHB /1, APB1 /2 (50 MHz max), APB2 /1 */
    REG32(RCC_CFGR) = (REG32(RCC_CFGR) & ~0xFCF0u) | (4u << 10);
    REG32(RCC_CFGR) = (REG32(RCC_CFGR) & ~3u) | 2u;      /* SW = PLL */
    tvmp_wait(RCC_CFGR, 3u << 2, 2u << 2, SPINS);        /* SWS = PLL */
}

static void console_usart3(void) {
    REG32(RCC_AHB1ENR) |= 1u << 3;                       /* GPIODEN */
    REG32(RCC_APB1ENR) |= 1u << 18;                      /* USART3EN */
    REG32(GPIOD + 0x00u) = (REG32(GPIOD + 0x00u) & ~(0xFu << 16)) | (0xAu << 16);  /* PD8, PD9: AF */
    REG32(GPIOD + 0x24u) = (REG32(GPIOD + 0x24u) & ~0xFFu) | 0x77u;               /* AF7 */
    REG32(USART_BRR) = (APB1_HZ + BAUD / 2u) / BAUD;
    REG32(USART_CR1) = (1u << 13) | (1u << 3);           /* UE, TE */
}

void tvmp_uart_putc(char c) {
    tvmp_wait(USART_SR, 1u << 7, 1u << 7, SPINS);        /* TXE */
    REG32(USART_DR) = (uint8_t)c;
}

void tvmp_board_init(void) {
    REG32(SCB_VTOR) = 0x08000000u;
    clock_100mhz();
    console_usart3();
    tvmp_dwt_start();
}
