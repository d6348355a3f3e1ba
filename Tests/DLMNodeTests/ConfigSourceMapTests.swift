// The locator that gives semantic config errors their line and column (TOMLKit has no positions).

import Testing
@testable import DLMNode

@Suite("Config source locator")
struct ConfigSourceMapTests {
    typealias Ref = TOMLSourceMap.TableRef

    func pos(_ line: Int, _ column: Int) -> SourcePosition { SourcePosition(line: line, column: column) }

    @Test("the N-th [[node]] header and the keys inside it")
    func arrayOfTables() {
        let map = TOMLSourceMap("""
            # [[node]] in a comment is not a header
            [cluster]
            name = "lab"   # name = "other"

            [[node]]
            id = 1
            addresses = ["10.0.0.1"]

            [[node]]
              id = 2
            addresses = [ "10.0.0.2", "10.0.0.3" ]
            """)
        #expect(map.table(Ref(path: ["cluster"])) == pos(2, 1))
        #expect(map.key("name", in: Ref(path: ["cluster"])) == pos(3, 1))
        #expect(map.value("name", in: Ref(path: ["cluster"])) == pos(3, 8))
        #expect(map.table(Ref(path: ["node"], index: 0)) == pos(5, 1))
        #expect(map.table(Ref(path: ["node"], index: 1)) == pos(9, 1))
        #expect(map.key("id", in: Ref(path: ["node"], index: 0)) == pos(6, 1))
        #expect(map.key("id", in: Ref(path: ["node"], index: 1)) == pos(10, 3))
        #expect(map.value("id", in: Ref(path: ["node"], index: 1)) == pos(10, 8))
        #expect(map.element(0, of: "addresses", in: Ref(path: ["node"], index: 1)) == pos(11, 15))
        #expect(map.element(1, of: "addresses", in: Ref(path: ["node"], index: 1)) == pos(11, 27))
        // Absent keys fall back to the table's header; absent tables to the start of the file.
        #expect(map.key("weight", in: Ref(path: ["node"], index: 1)) == pos(9, 1))
        #expect(map.table(Ref(path: ["lockspace"], index: 0)) == .start)
    }

    @Test("strings, multi-line arrays and strings, and comments do not confuse it")
    func tricky() {
        let map = TOMLSourceMap("""
            [cluster]
            name = "a # not a comment [[node]]"
            fence_command = '''
            fence --node "$1" ]
            [[node]]
            '''
            other = "esc \\" [x]"

            [[node]]
            addresses = [
              "10.0.0.1",   # first
              # "10.0.0.9",
              "10.0.0.2",
            ]
            weight = 3
            """)
        let cluster = Ref(path: ["cluster"])
        #expect(map.key("fence_command", in: cluster) == pos(3, 1))
        #expect(map.key("other", in: cluster) == pos(7, 1))
        let node = Ref(path: ["node"], index: 0)
        #expect(map.table(node) == pos(9, 1))
        #expect(map.location(of: "addresses", in: node)?.elements == [pos(11, 3), pos(13, 3)])
        #expect(map.key("weight", in: node) == pos(15, 1))
        #expect(map.table(Ref(path: ["node"], index: 1)) == .start)
    }

    @Test("inline tables in an array stand for [[node]] N; dotted keys and sub-table headers")
    func inlineAndDotted() {
        let map = TOMLSourceMap("""
            node = [
              { id = 1, addresses = ["10.0.0.1"] },
              {id=2,  kind = "peer"},
            ]
            cluster.name = "lab"
            [cluster.heartbeat]
            interval = 1
            """)
        #expect(map.table(Ref(path: ["node"], index: 0)) == pos(2, 3))
        #expect(map.key("addresses", in: Ref(path: ["node"], index: 0)) == pos(2, 13))
        #expect(map.key("kind", in: Ref(path: ["node"], index: 1)) == pos(3, 11))
        #expect(map.key("cluster", in: .root) == pos(5, 1))
        #expect(map.key("cluster.name", in: .root) == pos(5, 1))
        #expect(map.key("heartbeat", in: Ref(path: ["cluster"])) == pos(6, 1))
        #expect(map.key("interval", in: Ref(path: ["cluster", "heartbeat"])) == pos(7, 1))
    }

    @Test("CRLF line ends, a BOM, quoted keys and non-ASCII text count columns in characters")
    func crlfAndUnicode() {
        let map = TOMLSourceMap("\u{FEFF}[cluster]\r\nname = \"läb\" \r\n\"port\" = 1\r\n[[lockspace]]\r\nname = \"é\"\r\n")
        #expect(map.table(Ref(path: ["cluster"])) == pos(1, 1))
        #expect(map.key("port", in: Ref(path: ["cluster"])) == pos(3, 1))
        #expect(map.value("port", in: Ref(path: ["cluster"])) == pos(3, 10))
        #expect(map.table(Ref(path: ["lockspace"], index: 0)) == pos(4, 1))
    }
}
