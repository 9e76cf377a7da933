"""memstream's test suite (a package so `tests.kafka_broker` can be loaded as a plugin)."""
