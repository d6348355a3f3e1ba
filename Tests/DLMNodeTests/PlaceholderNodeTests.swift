import Testing
@testable import DLMNode
