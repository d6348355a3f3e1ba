from lab.util import directory_node, jhash


def test_jhash_vectors():
    # wire.md §10.e and locking.md §3.1
    assert jhash(b"") == 0xDEADBEEF
    assert jhash(b"a") == 0x58D68708
    assert jhash(b"foo") == 0xE18F6896
    assert jhash(b"abcdefghijkl") == 0x4012F87B
    assert jhash(b"abcdefghijklm") == 0x928128F9
    assert jhash(b"Four score and seven years ago") == 0x17770551


def test_directory_node():
    # locking.md §3.2: members {1,2,3}, "a" -> 0x58d6 % 3 = 2 -> node 3
    assert directory_node(b"a", [(1, 1), (2, 1), (3, 1)]) == 3
    # weights repeat a member; all-zero weights count everyone once
    assert directory_node(b"a", [(1, 0), (2, 0), (3, 0)]) == 3
    assert directory_node(b"a", [(1, 1), (2, 0), (3, 0)]) == 1
