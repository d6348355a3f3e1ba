// Where things are in a TOML file, for error messages.
//
// TOMLKit (toml++ underneath) gives positions only for syntax errors; its tables and values carry
// no source region. The config checker runs on a document toml++ has already accepted, so this
// scanner only has to find, not to validate: it walks the text once and records, for every table
// instance (the root, `[cluster]`, the N-th `[[node]]`, an inline table inside an array), where its
// header is and where each of its keys, values and top-level array elements start.
//
// Lines and columns are 1-based; columns count Unicode scalars (what an editor shows for UTF-8
// text), the same convention as toml++'s own error positions.

/// A line and column in a source file (both 1-based).
public struct SourcePosition: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var line: Int
    public var column: Int

    public init(line: Int, column: Int) {
        self.line = line
        self.column = column
    }

    /// The start of the file.
    public static let start = SourcePosition(line: 1, column: 1)

    public static func < (a: SourcePosition, b: SourcePosition) -> Bool {
        (a.line, a.column) < (b.line, b.column)
    }

    public var description: String { "\(line):\(column)" }
}

/// Positions of tables, keys and array elements in one TOML text.
struct TOMLSourceMap: Sendable {
    /// One table instance: `path` of its header (`["node"]` for `[[node]]`), and for arrays of
    /// tables the 0-based occurrence (`[[node]]` number N+1 has index N), which is also the
    /// index of that table in the parsed array.
    struct TableRef: Hashable, Sendable {
        var path: [String]
        var index: Int?

        static let root = TableRef(path: [], index: nil)

        init(path: [String], index: Int? = nil) {
            self.path = path
            self.index = index
        }
    }

    /// Where one `key = value` is: the key's first character, the value's first character, and
    /// for an array value the first character of each top-level element.
    struct KeyLocation: Hashable, Sendable {
        var key: SourcePosition
        var value: SourcePosition
        var elements: [SourcePosition]
    }

    private(set) var headers: [TableRef: SourcePosition] = [:]
    private(set) var keys: [TableRef: [String: KeyLocation]] = [:]

    init(_ text: String) {
        var scalars = Array(text.unicodeScalars)
        if scalars.first == "\u{FEFF}" { scalars.removeFirst() }  // a UTF-8 BOM is not a column
        var scanner = SourceScanner(scalars)
        scanner.run()
        headers = scanner.headers
        keys = scanner.keys
    }

    // MARK: Lookups (each falls back to something enclosing, never fails)

    /// The `[header]` of a table, or where an inline table starts; the start of the file for the
    /// root or anything not found.
    func table(_ t: TableRef) -> SourcePosition {
        if let p = headers[t] { return p }
        // An inline table that is element `index` of the array `path.last` in its parent table,
        // e.g. `node = [{ id = 1 }, …]`, or the value of a key (`cluster = { … }`).
        if let last = t.path.last {
            let parent = TableRef(path: Array(t.path.dropLast()))
            if let loc = keys[parent]?[last] {
                if let i = t.index, i < loc.elements.count { return loc.elements[i] }
                return loc.value
            }
        }
        return .start
    }

    /// The location of `key` in table `t`, if that key is written there.
    func location(of key: String, in t: TableRef) -> KeyLocation? {
        keys[t]?[key]
    }

    /// Where `key` is written in `t`; for a sub-table written as its own header
    /// (`[cluster.heartbeat]`), that header; otherwise the table's header.
    func key(_ key: String, in t: TableRef) -> SourcePosition {
        if let loc = keys[t]?[key] { return loc.key }
        if let p = headers[TableRef(path: t.path + [key])] { return p }
        if let p = headers[TableRef(path: t.path + [key], index: 0)] { return p }
        return table(t)
    }

    /// Where the value of `key` starts (the key's table header if the key is absent).
    func value(_ key: String, in t: TableRef) -> SourcePosition {
        if let loc = keys[t]?[key] { return loc.value }
        return self.key(key, in: t)
    }

    /// Where element `index` of the array value of `key` starts (the value if not an array).
    func element(_ index: Int, of key: String, in t: TableRef) -> SourcePosition {
        if let loc = keys[t]?[key] {
            return index < loc.elements.count ? loc.elements[index] : loc.value
        }
        return self.key(key, in: t)
    }
}

// MARK: - The scanner

private struct SourceScanner {
    let s: [Unicode.Scalar]
    var i = 0
    var line = 1
    var column = 1
    var headers: [TOMLSourceMap.TableRef: SourcePosition] = [:]
    var keys: [TOMLSourceMap.TableRef: [String: TOMLSourceMap.KeyLocation]] = [:]
    var arrayCounts: [[String]: Int] = [:]

    init(_ s: [Unicode.Scalar]) { self.s = s }

    var here: SourcePosition { SourcePosition(line: line, column: column) }
    var atEnd: Bool { i >= s.count }
    func peek(_ k: Int = 0) -> Unicode.Scalar? { i + k < s.count ? s[i + k] : nil }

    mutating func advance() {
        guard i < s.count else { return }
        if s[i] == "\n" {
            line += 1
            column = 1
        } else {
            column += 1
        }
        i += 1
    }

    mutating func advance(_ n: Int) { for _ in 0..<n { advance() } }

    /// Spaces and tabs (and stray CRs) on the current line.
    mutating func skipBlanks() {
        while let c = peek(), c == " " || c == "\t" || c == "\r" { advance() }
    }

    /// Blanks, newlines and comments (inside arrays).
    mutating func skipBlanksNewlinesComments() {
        while let c = peek() {
            if c == " " || c == "\t" || c == "\r" || c == "\n" {
                advance()
            } else if c == "#" {
                skipToEndOfLine()
            } else {
                return
            }
        }
    }

    mutating func skipToEndOfLine() {
        while let c = peek(), c != "\n" { advance() }
    }

    mutating func run() {
        headers[.root] = .start
        var current = TOMLSourceMap.TableRef.root
        while let c = peek() {
            if c == " " || c == "\t" || c == "\r" || c == "\n" {
                advance()
            } else if c == "#" {
                skipToEndOfLine()
            } else if c == "[" {
                let pos = here
                advance()
                let isArray = peek() == "["
                if isArray { advance() }
                let path = keyPath()
                skipBlanks()
                if peek() == "]" { advance() }
                if isArray, peek() == "]" { advance() }
                let ref: TOMLSourceMap.TableRef
                if isArray {
                    let n = arrayCounts[path, default: 0]
                    arrayCounts[path] = n + 1
                    ref = .init(path: path, index: n)
                } else {
                    ref = .init(path: path)
                }
                if headers[ref] == nil { headers[ref] = pos }
                current = ref
                skipToEndOfLine()
            } else {
                let before = i
                keyValue(in: current)
                if i == before { advance() }  // never loop on something unexpected
            }
        }
    }

    /// `key = value` in table `t` (also used inside inline tables, with `t` nil: not recorded).
    mutating func keyValue(in t: TOMLSourceMap.TableRef?) {
        let keyPos = here
        let path = keyPath()
        skipBlanks()
        guard peek() == "=" else {
            skipToEndOfLine()
            return
        }
        advance()
        skipBlanks()
        let valuePos = here
        // An inline table or array of inline tables becomes a table instance of its own.
        let childPath = t.map { $0.path + path }
        let elements = value(inlineTable: childPath.map { .init(path: $0) }, arrayOfTables: childPath)
        guard let t, !path.isEmpty else { return }
        let loc = TOMLSourceMap.KeyLocation(key: keyPos, value: valuePos, elements: elements)
        let joined = path.joined(separator: ".")
        if keys[t, default: [:]][joined] == nil { keys[t, default: [:]][joined] = loc }
        if path.count > 1, keys[t, default: [:]][path[0]] == nil {
            keys[t, default: [:]][path[0]] = TOMLSourceMap.KeyLocation(key: keyPos, value: keyPos, elements: [])
        }
    }

    /// A dotted key: bare, "basic" or 'literal' parts separated by dots.
    mutating func keyPath() -> [String] {
        var parts: [String] = []
        while true {
            skipBlanks()
            guard let c = peek() else { break }
            if c == "\"" {
                advance()
                parts.append(stringBody(quote: "\"", escapes: true))
            } else if c == "'" {
                advance()
                parts.append(stringBody(quote: "'", escapes: false))
            } else {
                var part = ""
                while let c = peek(), isBareKeyScalar(c) {
                    part.unicodeScalars.append(c)
                    advance()
                }
                if part.isEmpty { break }
                parts.append(part)
            }
            skipBlanks()
            if peek() == "." {
                advance()
            } else {
                break
            }
        }
        return parts
    }

    func isBareKeyScalar(_ c: Unicode.Scalar) -> Bool {
        switch c {
        case "A"..."Z", "a"..."z", "0"..."9", "_", "-": return true
        default: return false
        }
    }

    /// The rest of a one-line string after its opening quote; consumes the closing quote.
    mutating func stringBody(quote: Unicode.Scalar, escapes: Bool) -> String {
        var out = ""
        while let c = peek(), c != "\n" {
            if c == quote {
                advance()
                return out
            }
            if escapes, c == "\\", let next = peek(1) {
                // Enough for keys: keep the escaped character itself.
                out.unicodeScalars.append(next)
                advance(2)
                continue
            }
            out.unicodeScalars.append(c)
            advance()
        }
        return out
    }

    /// Skips one value and returns the positions of its top-level elements if it is an array.
    /// `inlineTable`: the table instance an inline-table value is recorded as; `arrayOfTables`:
    /// the path under which inline-table elements of an array value are recorded (index = element).
    mutating func value(inlineTable: TOMLSourceMap.TableRef?, arrayOfTables: [String]?) -> [SourcePosition] {
        guard let c = peek() else { return [] }
        switch c {
        case "\"", "'":
            if peek(1) == c, peek(2) == c {
                advance(3)
                multilineString(quote: c, escapes: c == "\"")
            } else {
                advance()
                _ = stringBody(quote: c, escapes: c == "\"")
            }
            return []
        case "[":
            advance()
            var elements: [SourcePosition] = []
            while true {
                skipBlanksNewlinesComments()
                guard let d = peek() else { break }
                if d == "]" {
                    advance()
                    break
                }
                if d == "," {  // only after an element; tolerate anything toml++ let through
                    advance()
                    continue
                }
                elements.append(here)
                let before = i
                let child = arrayOfTables.map { TOMLSourceMap.TableRef(path: $0, index: elements.count - 1) }
                _ = value(inlineTable: child, arrayOfTables: nil)
                if i == before { advance() }
                skipBlanksNewlinesComments()
                if peek() == "," { advance() }
            }
            return elements
        case "{":
            if let t = inlineTable, headers[t] == nil { headers[t] = here }
            advance()
            while true {
                skipBlanks()
                guard let d = peek(), d != "\n" else { break }
                if d == "}" {
                    advance()
                    break
                }
                if d == "," {
                    advance()
                    continue
                }
                let before = i
                keyValue(in: inlineTable)
                if i == before { advance() }
            }
            return []
        default:
            // Numbers, booleans, dates and times: up to a delimiter.
            while let d = peek(), !(d == "," || d == "]" || d == "}" || d == "\n" || d == "#") {
                advance()
            }
            return []
        }
    }

    /// The rest of a `"""` or `'''` string after its opening delimiter.
    mutating func multilineString(quote: Unicode.Scalar, escapes: Bool) {
        while let c = peek() {
            if escapes, c == "\\" {
                advance(2)
                continue
            }
            if c == quote, peek(1) == quote, peek(2) == quote {
                advance(3)
                // Up to two more quotes may belong to the content ("""a"""" is `a"`).
                var extra = 0
                while extra < 2, peek() == quote {
                    advance()
                    extra += 1
                }
                return
            }
            advance()
        }
    }
}
