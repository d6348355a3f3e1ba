"""The lock-dump parser (kernel debugfs `<ls>` layout) and the cluster-wide invariants."""
import os

import pytest

from lab import dumps

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

# node 1 masters "r1": node 1's own EX is granted, node 2's PR waits; node 2 holds the
# process copy of its PR.
MASTER = '''
Resource (____ptrval____) Name (len=2) "r1"
Master Copy
LVB: 01 02 03 04 00 00 00 00 00 00 00 00 00 00 00 00
     00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
Granted Queue
00000001 EX
Conversion Queue
Waiting Queue
00000007 -- (PR) Remote:   2 00000003
'''
PROCESS = '''
Resource (____ptrval____) Name (len=2) "r1"
Local Copy, Master is node 1
Granted Queue
Conversion Queue
Waiting Queue
00000003 -- (PR) Master:     00000007 wait_type: 0
'''


def test_real_kernel_dump():
    text = open(os.path.join(DATA, "kernel-6.1-alpha.dump")).read()
    d = dumps.parse(text)
    assert list(d) == ["res-d0"]
    r = d["res-d0"]
    assert r.master == 0 and r.lvb is None
    assert [(l.lkid, l.grmode, l.queue, l.nodeid) for l in r.locks] == [(1, "EX", "granted", None)]


def test_parse_queues_lvb_and_copies():
    m = dumps.parse(MASTER)["r1"]
    assert m.master == 0 and m.lvb[:4] == b"\x01\x02\x03\x04" and len(m.lvb) == 32 and not m.lvb_invalid
    assert [(l.lkid, l.grmode, l.rqmode, l.queue, l.nodeid, l.remid) for l in m.locks] == [
        (1, "EX", None, "granted", None, None), (7, "--", "PR", "waiting", 2, 3)]
    p = dumps.parse(PROCESS)["r1"]
    assert p.master == 1
    (l,) = p.locks
    assert (l.lkid, l.rqmode, l.process_copy, l.remid, l.wait_type) == (3, "PR", True, 7, 0)


def test_invariants_hold():
    assert dumps.check({1: dumps.parse(MASTER), 2: dumps.parse(PROCESS)}, [1, 2]) == []


def test_invariants_catch_violations():
    both_ex = ('Resource p Name (len=2) "r1"\nMaster Copy\nGranted Queue\n00000001 EX\n'
               '00000007 EX Remote:   2 00000003\nConversion Queue\nWaiting Queue\n')
    process_granted = ('Resource p Name (len=2) "r1"\nLocal Copy, Master is node 1\nGranted Queue\n'
                       '00000003 EX Master:     00000007\nConversion Queue\nWaiting Queue\n')
    bad = dumps.check({1: dumps.parse(both_ex), 2: dumps.parse(process_granted)}, [1, 2])
    assert any("incompatible granted modes EX" in b for b in bad), bad
    # a process copy without its master copy, and a master copy of a non-member's lock
    orphan = PROCESS.replace("00000003", "00000009")
    bad = dumps.check({1: dumps.parse(MASTER), 2: dumps.parse(orphan)}, [1, 2])
    assert any("has no master copy" in b for b in bad) and any("has no process copy" in b for b in bad), bad
    bad = dumps.check({1: dumps.parse(MASTER)}, [1])
    assert any("not a member" in b for b in bad), bad
    # two nodes that both think they master it
    bad = dumps.check({1: dumps.parse(MASTER), 2: dumps.parse(MASTER)}, [1, 2])
    assert any("disagree on the master" in b for b in bad), bad


def test_unreadable_line_names_it():
    with pytest.raises(dumps.DumpError, match="line 4"):
        dumps.parse('Resource x Name (len=1) "a"\nMaster Copy\nGranted Queue\nbogus\n')


def test_invariants_catch_a_duplicated_master_copy():
    # a recovery that rebuilt node 2's lock 3 twice on the master (the -EEXIST path missed)
    twice = MASTER.replace("00000007 -- (PR) Remote:   2 00000003\n",
                           "00000007 -- (PR) Remote:   2 00000003\n00000008 -- (PR) Remote:   2 00000003\n")
    bad = dumps.check({1: dumps.parse(twice), 2: dumps.parse(PROCESS)}, [1, 2])
    assert any("two master copies (7, 8) of node 2's lock 3" in b for b in bad), bad
