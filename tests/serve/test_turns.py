"""Decoding and forward passes take turns (serve.batching.Turns): real threads, no mocks."""

from __future__ import annotations

import threading
import time

from serve.batching import Turns


def test_a_forward_pass_waits_for_decodes_in_progress_and_holds_new_ones() -> None:
    turns = Turns(max_wait_s=5.0)
    events: list[str] = []
    decoding, release = threading.Event(), threading.Event()

    def decode(name: str, hold: threading.Event | None = None) -> None:
        with turns.decoding():
            events.append(f"{name} start")
            if hold is not None:
                decoding.set()
                hold.wait(5)
            events.append(f"{name} end")

    first = threading.Thread(target=decode, args=("decode1", release))
    first.start()
    decoding.wait(5)

    def forward() -> None:
        with turns.forward():
            events.append("forward start")
            time.sleep(0.2)  # a decode arriving now waits for the pass to end
            events.append("forward end")

    passing = threading.Thread(target=forward)
    passing.start()
    time.sleep(0.1)
    assert events == ["decode1 start"]  # the forward pass waits for the decode in progress
    release.set()
    time.sleep(0.05)
    second = threading.Thread(target=decode, args=("decode2",))
    second.start()
    for thread in (first, passing, second):
        thread.join(5)
    assert events == ["decode1 start", "decode1 end", "forward start", "forward end", "decode2 start", "decode2 end"]


def test_a_stream_of_decodes_holds_a_forward_pass_off_only_for_the_bound() -> None:
    turns = Turns(max_wait_s=0.1)
    stop = threading.Event()

    def keep_decoding() -> None:
        while not stop.is_set():
            with turns.decoding():
                time.sleep(0.02)

    decoders = [threading.Thread(target=keep_decoding) for _ in range(2)]
    for thread in decoders:
        thread.start()
    time.sleep(0.05)
    started = time.monotonic()
    with turns.forward():
        waited = time.monotonic() - started
    stop.set()
    for thread in decoders:
        thread.join(5)
    assert waited < 0.5
