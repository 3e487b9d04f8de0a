"""Write throughput of the Parquet sink: rows/s and bytes per row for
connects rows, journal and fsync included. `python -m bench.sink_throughput`"""
import random
import tempfile
import time
from pathlib import Path

from tracer.sinks.parquet_writer import Recording

N, BATCH = 200_000, 2_000


def rows(n, start):
    rnd = random.Random(start)
    t0 = int(time.time() * 1e6)
    return [dict(ts=t0 + i, pid=rnd.randrange(100, 200), tid=100, comm="worker", family=4,
                 saddr="10.0.0.1", sport=rnd.randrange(32768, 61000),
                 daddr=f"10.0.{rnd.randrange(4)}.{rnd.randrange(250)}", dport=443,
                 latency_us=rnd.lognormvariate(6, 1), outcome="established", syn_retransmits=0)
            for i in range(start, start + n)]


def main():
    with tempfile.TemporaryDirectory() as d:
        data = [rows(BATCH, i) for i in range(0, N, BATCH)]
        rec = Recording(d, flush_interval_s=2.0)
        t0 = time.perf_counter()
        for batch in data:
            rec.write("connects", batch)
            rec.tick()
        rec.close()
        elapsed = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in Path(d, "connects").rglob("*.parquet"))
    print(f"connects rows: {N}, in batches of {BATCH} (list of dicts)")
    print(f"end to end incl. close: {N / elapsed:,.0f} rows/s, {size / N:.1f} Parquet bytes/row")


if __name__ == "__main__":
    main()
