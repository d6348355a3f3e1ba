import DLMTransport
import NIOCore
