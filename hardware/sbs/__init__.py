"""Smart Battery System (SBS 1.1) gauges over SMBus/I2C (TI bq40z50 and compatibles)."""
