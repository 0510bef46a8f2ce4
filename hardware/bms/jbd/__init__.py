"""JBD / Xiaoxiang / Jiabaida "smart BMS" UART protocol (DD ... 77)."""
