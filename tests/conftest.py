"""Suite-wide settings: the real Kafka broker fixture, and Hypothesis without wall-clock limits.

Hypothesis' per-example deadline (200 ms) and its too-slow health check are wall-clock
thresholds; on a shared 2-core machine they failed property tests whose properties held
(DeadlineExceeded at 285 ms in test_avro under load). The properties are what the tests
check; speed is measured by bench/, as ratios.
"""

from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.kafka_broker"]

settings.register_profile("memstream", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("memstream")
