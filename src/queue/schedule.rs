//! Retry schedule (`outbound.ini temp_fail_intervals`). Being written.
