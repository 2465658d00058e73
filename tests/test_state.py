"""TrackStore on SQLite: round trips, two writer processes at once, reopening; anchor merging."""
import subprocess
import sys

from scribblebox.backend.state import RegionState, TrackStore, merge_anchors
from scribblebox.models.track import Keyframe

A = Keyframe.of(0, [10, 10, 50, 40])
B = Keyframe.of(20, [30, 12, 50, 40])
C = Keyframe.of(40, [60, 14, 50, 40], enabled=False)


def test_put_get_delete_and_list(tmp_path):
    store = TrackStore(tmp_path / "state.sqlite3")
    state = RegionState("/data/upload/1/a.mp4", anchors=[A], answered=[A, B, C], result={"num_frames": 50, "keyframes": []})
    assert store.get("1", "7", "r1") is None
    store.put("1", "7", "r1", state)
    store.put("1", "7", "r2", RegionState("/data/upload/1/a.mp4"))
    store.put("1", "8", "r1", RegionState("/data/upload/1/b.mp4"))
    got = store.get("1", "7", "r1")
    assert got == state and got.answered[2].enabled is False
    assert sorted(store.list_task("1", "7")) == ["r1", "r2"]
    assert store.delete("1", "7", "r2") == 1 and store.get("1", "7", "r2") is None
    assert store.delete("1", "8") == 1 and store.list_task("1", "8") == {}
    assert store.get("2", "7", "r1") is None, "projects are separate"


def test_label_configs(tmp_path):
    store = TrackStore(tmp_path / "s.db")
    assert store.get_label_config("3") is None
    store.put_label_config("3", "<View/>")
    assert store.get_label_config("3") == "<View/>"


def test_wal_mode_and_survives_reopen(tmp_path):
    path = tmp_path / "state.sqlite3"
    TrackStore(path).put("1", "7", "r1", RegionState("v", [A], [A]))
    import sqlite3

    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert TrackStore(path).get("1", "7", "r1").anchors == [A]


WRITER = """
import sys
from scribblebox.backend.state import RegionState, TrackStore
from scribblebox.models.track import Keyframe

path, worker, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = TrackStore(path)
for i in range(count):
    store.put("1", str(i % 5), f"w{worker}-{i}", RegionState(f"video-{worker}", [Keyframe.of(i, [i, i, 10, 10])], []))
    store.get("1", str(i % 5), f"w{worker}-{i}")
"""


def test_two_processes_write_concurrently(tmp_path):
    """Fresh interpreters, as gunicorn workers are: a fork of the pytest process could inherit a lock held by one
    of its threads (background jobs of earlier tests) and hang."""
    path = str(tmp_path / "state.sqlite3")
    TrackStore(path)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, path, str(w), "150"]) for w in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    store = TrackStore(path)
    total = sum(len(store.list_task("1", str(t))) for t in range(5))
    assert total == 300
    assert store.get("1", "4", "w1-149").anchors == [Keyframe.of(149, [149, 149, 10, 10])]


def test_merge_anchors_first_call_takes_everything():
    assert merge_anchors([B, A], None) == [A, B]


def test_merge_anchors_keeps_user_changes_and_old_anchors():
    state = RegionState("v", anchors=[A], answered=[A, B, C])
    moved_b = Keyframe.of(20, [80, 12, 50, 40])
    new = Keyframe.of(30, [70, 12, 50, 40])
    # A unchanged (old anchor, kept), B moved (anchor), C accepted as is (not an anchor), a new keyframe (anchor).
    assert merge_anchors([A, moved_b, C, new], state) == [A, moved_b, new]
    # Rounding by LS (< 1 px) is not a change.
    nudged_c = Keyframe.of(40, [60.4, 14.2, 50, 40], enabled=False)
    assert merge_anchors([A, B, nudged_c], state) == [A]
    # Toggling visibility is a change.
    assert merge_anchors([A, Keyframe.of(40, C.box, True)], state) == [A, Keyframe.of(40, C.box, True)]
    # The old anchor deleted by the user is dropped; nothing left -> every given keyframe.
    assert merge_anchors([B, C], state) == [B, C]
