"""JK-BMS "4E 57" UART-TTL / RS485 protocol (the GPS port of JK-B... boards)."""
