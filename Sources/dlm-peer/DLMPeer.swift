import ArgumentParser

@main
struct DLMPeer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dlm-peer",
        abstract: "A userspace Linux DLM node (protocol 3.1/3.2) and its tools.",
        subcommands: [RunCommand.self, StatusCommand.self, LsStopCommand.self, LsStartCommand.self, DecodeCommand.self,
                      ConfigCommand.self, BenchCommand.self,
                      LockCommand.self, ConvertCommand.self, UnlockCommand.self, CancelCommand.self, HoldCommand.self,
                      LocksCommand.self, PurgeCommand.self,
                      AgentCommand.self, ReloadCommand.self, NodeDownCommand.self, AgentStatusCommand.self])
}
