"""Tables (RocksDB via rocksdict, changelog-backed) and the pure state logic behind them."""
