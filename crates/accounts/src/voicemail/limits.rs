//! The bounds a voicemail box is held to (so that callers cannot fill the disk or
//! memory through it) and the error that says one was reached.

/// Messages one box holds at most: a deposit into a full box is refused (the call side
/// says the box is full), so a caller cannot fill the disk through one extension.
pub const MAX_MESSAGES: usize = 100;
/// The largest message file read back (five minutes of 16-bit 8 kHz audio, with room).
pub const MAX_MESSAGE_BYTES: u64 = 8 * 1024 * 1024;
/// The largest greeting (two minutes of 16-bit 8 kHz audio, with room).
pub const MAX_GREETING_BYTES: usize = 2 * 1024 * 1024;
/// How much of a caller's identity is kept (display only).
pub const MAX_CALLER_CHARS: usize = 128;

/// Why a voicemail operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum VoicemailError {
    #[error("the voicemail box of extension {number} is full ({max} messages)")]
    BoxFull { number: String, max: usize },
    #[error("the {what} is larger than {max} bytes")]
    TooLarge { what: &'static str, max: u64 },
    #[error("the {what} is not a WAV file")]
    NotWav { what: &'static str },
}
