import DLMTransport

/// The owner-side argument checks of the kernel's `dlm_lock`/`dlm_unlock` (`set_lock_args`,
/// `validate_lock_args`, `set_unlock_args`; locking.md §7.1). The grant engine itself, like the
/// kernel's master, does not apply them: a master acts on whatever flags the owner sent.
public enum LockValidation {
    /// `set_lock_args`: -EINVAL for a mode outside NL…EX and the illegal flag combinations.
    /// `hasLVB`: the caller supplied a value block buffer.
    public static func checkLockArguments(mode: LockMode, flags: LockFlags, hasLVB: Bool, nameLength: Int = 0) -> LockResult? {
        if mode == .iv { return .invalid }
        if !flags.contains(.convert) && nameLength > WireLimits.maxResourceNameLength { return .invalid }
        if flags.contains(.cancel) { return .invalid }
        if flags.contains(.queCvt) && !flags.contains(.convert) { return .invalid }
        if flags.contains(.convDeadlk) && !flags.contains(.convert) { return .invalid }
        if flags.contains(.convDeadlk) && flags.contains(.noQueue) { return .invalid }
        if flags.contains(.expedite) && flags.contains(.convert) { return .invalid }
        if flags.contains(.expedite) && flags.contains(.queCvt) { return .invalid }
        if flags.contains(.expedite) && flags.contains(.noQueue) { return .invalid }
        if flags.contains(.expedite) && mode != .nl { return .invalid }
        if flags.contains(.valBlk) && !hasLVB { return .invalid }
        return nil
    }

    /// `validate_lock_args` for a conversion of `lock` (a local or process copy): -EINVAL for a
    /// master copy or a QUECVT pair outside the QUECVT table, -EBUSY unless the lock is granted.
    /// (The "no operation in flight" checks belong to the waiters layer.)
    public static func checkConversion(of lock: LockEntry, to mode: LockMode, flags: LockFlags) -> LockResult? {
        if lock.isMasterCopy { return .invalid }
        if flags.contains(.queCvt) && !LockMode.queuedConversionAllowed(granted: lock.grantedMode, requested: mode) {
            return .invalid
        }
        if lock.status != .granted { return .busy }
        return nil
    }

    /// `set_unlock_args`: only CANCEL, VALBLK, IVVALBLK and FORCEUNLOCK, and not CANCEL with
    /// FORCEUNLOCK.
    public static func checkUnlockArguments(flags: LockFlags) -> LockResult? {
        let allowed: LockFlags = [.cancel, .valBlk, .ivValBlk, .forceUnlock]
        if !flags.subtracting(allowed).isEmpty { return .invalid }
        if flags.contains(.cancel) && flags.contains(.forceUnlock) { return .invalid }
        return nil
    }
}
