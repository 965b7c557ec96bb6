"""The storage scrub: a flipped byte and a deleted object (local directory and moto) are found by the next
scrub and restore check, marked so that plans route around them, reported (log, metrics, webhook) and
repaired where other files still cover their range; restores of unaffected points still work."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lfsb.server.main import Server
from lfsb.store.retention import enforce_retention
from tests.lfsb_server import History, age_files, export_rows, indexed_files, lfsb
from tests.litefs import LiteFSEmulator
from tests.test_notify import Receiver, receiver  # noqa: F401 - the fixture
from tests.test_verify import flip_byte, metric_lines

SETTINGS = {"LFSB_L0_RETENTION": "1m", "LFSB_SCRUB_INTERVAL": "1h", "LFSB_NOTIFY_AFTER": "1s"}


async def test_scrub_marks_repairs_and_routes_around(
    start_server: Callable,
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811
) -> None:
    server: Server = await start_server(LFSB_NOTIFY_URL=receiver.url + "/hook", **SETTINGS)
    server.notifier.retry_first = 0.05
    async with LiteFSEmulator(tmp_path / "node", server.url) as node:
        h = History(node)
        for count in (3, 2):
            await h.write(count)
            assert await server.scheduler.run(1) == 1
        assert await server.scheduler.run(2) == 1  # L2 1-5, from the two L1 files
        await h.write(2)
        assert await server.scheduler.run(1) == 1  # L1 6-7
        await age_files(server, 120)
        db = await server.store.database("test", "db")
        assert await enforce_retention(server.store, db, server.scheduler.retention) == 7  # the L0 files
        assert await indexed_files(server) == {(1, 1, 3), (1, 4, 5), (1, 6, 7), (2, 1, 5)}

        await flip_byte(server, (2, 1, 5))
        (gone,) = [i for i in await server.objects.list_files("test", "db", 1) if i.min_txid == 6]
        await server.objects.delete([gone])

        # The restore checks report both: the newest point needs the deleted object, TXID 5 the flipped one.
        newest = await server.verifier.check(db)
        assert not newest.ok and newest.txid == 7 and "missing" in newest.message, newest
        at5 = await server.verifier.check(db, txid=5)
        assert not at5.ok and "rebuild failed" in at5.message, at5

        await age_files(server, 7200)  # every object is due for the scrub
        assert await server.scrubber.run_once() == 4
        lines = await metric_lines(server)
        assert "lfsb_scrub_corrupt_found_total 2.0" in lines
        assert "lfsb_scrub_objects_total 4.0" in lines
        assert 'lfsb_corrupt_objects{cluster="test",database="db"} 1.0' in lines
        # The flipped object was rebuilt from the two L1 files; the deleted one has nothing to be rebuilt
        # from, so it stays marked and plans route around it.
        assert await indexed_files(server) == {(1, 1, 3), (1, 4, 5), (2, 1, 5)}
        corrupt = await server.store.files(db, corrupt=True)
        assert {f.key for f in corrupt} == {(1, 1, 3), (1, 4, 5), (1, 6, 7), (2, 1, 5)}

        assert (await server.verifier.check(db)).ok  # now the newest point in storage is 5
        assert (await server.verifier.check(db, txid=5)).ok
        rows = await export_rows(server, tmp_path / "at3.db", "--txid", "3")
        assert rows == h[3].rows
        assert await export_rows(server, tmp_path / "at5.db", "--txid", "5") == h[5].rows
        result = await lfsb(server, "verify", "db", "--txid", "7")
        assert result.exit_code == 1 and "ENOTXID" in result.output

        flipped = "corrupt:test/db/2/" + "0000000000000001-0000000000000005.ltx"
        deleted = "corrupt:test/db/1/" + "0000000000000006-0000000000000007.ltx"
        await receiver.wait_for(lambda: len(receiver.messages) == 5)
        sent = [(m["incident"], m["status"]) for m in receiver.messages]
        assert sent == [
            ("check:test/db", "open"),
            (flipped, "open"),
            (flipped, "resolved"),
            (deleted, "open"),
            ("check:test/db", "resolved"),
        ]
