//! Every alarm code a station records, in one place.
//!
//! The names are stable: they are written into ledgers (an `Alarm` record carries the code as
//! text, so old ledgers stay readable whatever this list becomes), counted in `/metrics` and read
//! by the hub. Add a code here, never a string literal at the place that raises it.

use std::fmt;

/// What an alarm is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlarmCode {
    /// Registers of a result block that do not decode (text, dates, numbers).
    ModbusDecode,
    /// The device answered a request with a Modbus exception.
    ModbusException,
    /// The result counter jumped: results were never read.
    ModbusMissedResults,
    /// A read-to-clear flag was consumed but its block could not be read and stored.
    ModbusResultLost,
    /// A block equal to the last recorded one was presented again (not recorded twice).
    ModbusResultPresentedAgain,
    /// A split block changed while it was read, every attempt.
    ModbusTornRead,
    /// A device's result counter went back: it restarted.
    DeviceRestarted,
    /// A MID 0061 that does not decode.
    OpBadResult,
    /// The controller refused a command (MID 0004).
    OpCommandError,
    /// Bytes from the controller that are no Open Protocol frame.
    OpGarbage,
    /// The controller refused the communication start.
    OpStartRefused,
    /// The controller refused the result subscription.
    OpSubscribeRefused,
    /// Tightening ids skipped: results the controller did not send.
    OpTighteningGap,
    /// Tightening ids started over (controller reset or replaced).
    OpTighteningIdReset,
    /// A serial line that is not a valid result line.
    SerialBadLine,
    /// A serial line longer than the configured limit.
    SerialOverlongLine,
    /// The ledger's disk budget is exhausted: devices are not acknowledged.
    StorageBudgetExhausted,
    /// The ledger takes more than the warning share of its disk budget.
    StorageBudgetWarning,
    /// The hub asked again for records it had cosigned: its data was lost or rolled back.
    HubRegression,
    /// The device reported another part than the one scanned.
    BindingIdentifierMismatch,
    /// The free space of the ledger's disk is below the reserve: devices are not acknowledged.
    StorageReserveBreached,
    /// A result too large for a ledger record: its hash and length are recorded instead, and
    /// the device is acknowledged so it does not resend it for ever.
    ResultTooLarge,
}

impl AlarmCode {
    pub const ALL: [AlarmCode; 22] = [
        AlarmCode::ModbusDecode,
        AlarmCode::ModbusException,
        AlarmCode::ModbusMissedResults,
        AlarmCode::ModbusResultLost,
        AlarmCode::ModbusResultPresentedAgain,
        AlarmCode::ModbusTornRead,
        AlarmCode::DeviceRestarted,
        AlarmCode::OpBadResult,
        AlarmCode::OpCommandError,
        AlarmCode::OpGarbage,
        AlarmCode::OpStartRefused,
        AlarmCode::OpSubscribeRefused,
        AlarmCode::OpTighteningGap,
        AlarmCode::OpTighteningIdReset,
        AlarmCode::SerialBadLine,
        AlarmCode::SerialOverlongLine,
        AlarmCode::StorageBudgetExhausted,
        AlarmCode::StorageBudgetWarning,
        AlarmCode::HubRegression,
        AlarmCode::BindingIdentifierMismatch,
        AlarmCode::StorageReserveBreached,
        AlarmCode::ResultTooLarge,
    ];

    /// The code as recorded.
    pub const fn as_str(self) -> &'static str {
        match self {
            AlarmCode::ModbusDecode => "modbus.decode",
            AlarmCode::ModbusException => "modbus.exception",
            AlarmCode::ModbusMissedResults => "modbus.missed_results",
            AlarmCode::ModbusResultLost => "modbus.result_lost",
            AlarmCode::ModbusResultPresentedAgain => "modbus.result_presented_again",
            AlarmCode::ModbusTornRead => "modbus.torn_read",
            AlarmCode::DeviceRestarted => "device.restarted",
            AlarmCode::OpBadResult => "op.bad_result",
            AlarmCode::OpCommandError => "op.command_error",
            AlarmCode::OpGarbage => "op.garbage",
            AlarmCode::OpStartRefused => "op.start_refused",
            AlarmCode::OpSubscribeRefused => "op.subscribe_refused",
            AlarmCode::OpTighteningGap => "op.tightening_gap",
            AlarmCode::OpTighteningIdReset => "op.tightening_id_reset",
            AlarmCode::SerialBadLine => "serial.bad_line",
            AlarmCode::SerialOverlongLine => "serial.overlong_line",
            AlarmCode::StorageBudgetExhausted => "storage.budget_exhausted",
            AlarmCode::StorageBudgetWarning => "storage.budget_warning",
            AlarmCode::HubRegression => "hub.regression",
            AlarmCode::BindingIdentifierMismatch => "binding.identifier_mismatch",
            AlarmCode::StorageReserveBreached => "storage.reserve_breached",
            AlarmCode::ResultTooLarge => "result.too_large",
        }
    }

    /// The code recorded as `s`, if it is one of ours.
    pub fn parse(s: &str) -> Option<AlarmCode> {
        AlarmCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for AlarmCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_one_distinct_name_that_parses_back() {
        let names: std::collections::BTreeSet<&str> =
            AlarmCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), AlarmCode::ALL.len());
        for c in AlarmCode::ALL {
            assert_eq!(AlarmCode::parse(c.as_str()), Some(c));
        }
        assert_eq!(AlarmCode::parse("modbus.nothing"), None);
    }
}
