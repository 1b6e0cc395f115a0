"""`make bench`: every benchmark, one after the other, on this machine.

Each writes its JSON under bench/results/ and prints a table; figures are medians, and ratios
come from runs side by side in the same process tree. Not a test: nothing here asserts a time.
"""

from bench import bench_engine, bench_faces, bench_retouch, bench_server, bench_train


def main() -> None:
    bench_engine.main([])
    bench_faces.main([])
    bench_retouch.main([])
    bench_server.main([])
    bench_train.main([])


if __name__ == "__main__":
    main()
