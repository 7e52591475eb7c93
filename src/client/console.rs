//! The interactive prompt both clients share: line editing, history, and the terminal rules.
//!
//! What it owns:
//!
//! - **Where things go.** Replies go to stdout and nothing else does. When stdout is not a
//!   terminal (`upecho tcp | tee out`) the prompt and the editing are drawn on the terminal itself
//!   (rustyline's `Behavior::PreferTerm` opens `/dev/tty`), and a reply is written as its bare
//!   bytes and a newline, so the pipeline gets replies and nothing else.
//! - **Keys.** Ctrl-C on a half-typed line abandons that line and prompts again, as shells do;
//!   Ctrl-C on an empty line, or Ctrl-D, ends the session. A multi-line paste comes back as
//!   several lines, one message each.
//! - **History** in `$XDG_STATE_HOME/upecho/history` (or `~/.local/state/upecho/history`), kept
//!   across sessions and written line by line, so a session that ends abruptly loses none.
//! - **Messages while the user types** ([`Messenger`]): printed above the prompt line, which is
//!   then redrawn, so a late reply or a server that went away is shown the moment it happens.
//! - **Waking the prompt** ([`PromptWaker`]): a background thread that finds the session over (the
//!   server closed) makes a pending `readline` return, by raising SIGINT: while rustyline edits a
//!   line it turns SIGINT into an interrupted read, the only way in from another thread.

use std::fs::{self, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use rustyline::config::Behavior;
use rustyline::error::ReadlineError;
use rustyline::{
    Cmd, ConditionalEventHandler, Config as EditorConfig, DefaultEditor, Event, EventContext,
    EventHandler, ExternalPrinter, KeyEvent, RepeatCount,
};

use super::Failure;

/// Lines kept in the history file: enough for a long debugging session, small enough to load at
/// once.
const HISTORY_LEN: usize = 1000;

/// How often, and how many times, a [`PromptWaker`] raises SIGINT until the prompt has noticed. More
/// than once because the signal only wakes `readline` while rustyline's handler is installed, and
/// a signal that lands just before it is lost to the prompt; bounded because on a terminal
/// rustyline cannot drive (`TERM=dumb`) it never notices.
const WAKE_EVERY: Duration = Duration::from_millis(20);
const WAKE_TRIES: u32 = 100;

/// The history file: `$XDG_STATE_HOME/upecho/history`, else `~/.local/state/upecho/history`.
/// `None` when neither is known. A relative `XDG_STATE_HOME` is ignored, as the XDG spec says.
pub fn history_path() -> Option<PathBuf> {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let state =
        from_env("XDG_STATE_HOME").or_else(|| from_env("HOME").map(|h| h.join(".local/state")))?;
    Some(state.join("upecho").join("history"))
}

/// What the user did at the prompt.
#[derive(Debug)]
pub enum Input {
    /// One line typed, or several pasted at once: each is one message.
    Lines(Vec<String>),
    /// Ctrl-D, or Ctrl-C on an empty line: the session is over.
    End,
    /// A [`PromptWaker`] ended the wait: the caller knows why.
    Woken,
}

/// Splits what `readline` returned into lines: a paste with newlines is several messages. A final
/// newline (a paste of whole lines) ends the last line; it does not start an empty one.
pub fn split_lines(text: &str) -> Vec<String> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    text.split('\n').map(str::to_string).collect()
}

/// Ctrl-C: on a half-typed line, notes that the line is being abandoned (so the prompt comes
/// back), then interrupts the read either way.
struct CtrlC {
    abandoned: Arc<AtomicBool>,
}

impl ConditionalEventHandler for CtrlC {
    fn handle(&self, _: &Event, _: RepeatCount, _: bool, ctx: &EventContext) -> Option<Cmd> {
        self.abandoned
            .store(!ctx.line().is_empty(), Ordering::SeqCst);
        Some(Cmd::Interrupt)
    }
}

/// Ends a pending [`Console::read`] from another thread.
#[derive(Clone, Debug)]
pub struct PromptWaker {
    requested: Arc<AtomicBool>,
    noticed: Arc<AtomicBool>,
}

impl PromptWaker {
    fn new() -> PromptWaker {
        PromptWaker {
            requested: Arc::new(AtomicBool::new(false)),
            noticed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Makes the prompt return [`Input::Woken`]; returns whether it did within the bound. Blocks
    /// the calling thread for at most `WAKE_TRIES * WAKE_EVERY`.
    pub fn wake(&self) -> bool {
        self.requested.store(true, Ordering::SeqCst);
        for _ in 0..WAKE_TRIES {
            if self.noticed.load(Ordering::SeqCst) {
                return true;
            }
            if let Err(e) = signal_hook::low_level::raise(libc::SIGINT) {
                log::debug!("raise(SIGINT): {e}");
                return false;
            }
            thread::sleep(WAKE_EVERY);
        }
        self.noticed.load(Ordering::SeqCst)
    }

    /// Tells a [`wake`](Self::wake) in progress that its news has arrived, so it stops.
    pub fn notice(&self) {
        self.noticed.store(true, Ordering::SeqCst);
    }

    fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

/// Prints messages for the user while the prompt may be on screen. Cheap to clone, usable from
/// any thread.
#[derive(Clone, Debug)]
pub struct Messenger {
    /// To the thread that owns rustyline's external printer; `None` when stderr is not the
    /// terminal (then messages belong in stderr, wherever it goes, and cannot disturb the prompt).
    printer: Option<mpsc::Sender<String>>,
}

impl Messenger {
    /// A messenger that writes straight to stderr (no prompt to take care of).
    pub fn stderr() -> Messenger {
        Messenger { printer: None }
    }

    /// Shows one line of news.
    pub fn say(&self, line: String) {
        match &self.printer {
            // The thread only goes away if its printer failed; stderr still works then.
            Some(tx) => {
                if let Err(mpsc::SendError(line)) = tx.send(format!("{line}\n")) {
                    eprintln!("{line}");
                }
            }
            None => eprintln!("{line}"),
        }
    }
}

/// Starts the thread that feeds rustyline's external printer. A thread of its own because
/// `print` blocks while an earlier message has not been drawn yet, which must never hold up the
/// thread that receives replies.
fn printer_thread(mut printer: impl ExternalPrinter + Send + 'static) -> Option<Messenger> {
    let (tx, rx) = mpsc::channel::<String>();
    let spawned = thread::Builder::new()
        .name("prompt-printer".into())
        .spawn(move || {
            for msg in rx {
                if let Err(e) = printer.print(msg.clone()) {
                    log::debug!("external printer: {e}");
                    eprint!("{msg}");
                }
            }
        });
    match spawned {
        Ok(_) => Some(Messenger { printer: Some(tx) }),
        Err(e) => {
            log::debug!("cannot start the printer thread: {e}");
            None
        }
    }
}

/// The prompt: a rustyline editor set up by the rules in the module docs.
pub struct Console {
    editor: DefaultEditor,
    prompt: String,
    history: Option<PathBuf>,
    /// Whether the history file has been made sure of (directory, private mode) this session.
    history_ready: bool,
    abandoned: Arc<AtomicBool>,
    prompt_waker: PromptWaker,
    messenger: Messenger,
    stdout_is_terminal: bool,
}

impl Console {
    /// Sets up the prompt; `history` is the file to keep lines in (`None`: keep none).
    pub fn new(prompt: String, history: Option<PathBuf>) -> Result<Console, Failure> {
        let stdout_is_terminal = io::stdout().is_terminal();
        let behavior = if stdout_is_terminal {
            Behavior::Stdio
        } else {
            Behavior::PreferTerm
        };
        let setup =
            |e: ReadlineError| Failure::Error(format!("cannot set up the line editor: {e}"));
        let config = EditorConfig::builder()
            .behavior(behavior)
            .auto_add_history(false)
            .history_ignore_dups(true)
            .map_err(setup)?
            .max_history_size(HISTORY_LEN)
            .map_err(setup)?
            .build();
        let mut editor = DefaultEditor::with_config(config).map_err(setup)?;
        let abandoned = Arc::new(AtomicBool::new(false));
        editor.bind_sequence(
            KeyEvent::ctrl('C'),
            EventHandler::Conditional(Box::new(CtrlC {
                abandoned: Arc::clone(&abandoned),
            })),
        );
        if let Some(path) = &history {
            match editor.load_history(path) {
                Ok(()) => {}
                Err(ReadlineError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => eprintln!("cannot read the history {}: {e}", path.display()),
            }
        }
        let messenger = if io::stderr().is_terminal() {
            editor
                .create_external_printer()
                .ok()
                .and_then(printer_thread)
                .unwrap_or_else(Messenger::stderr)
        } else {
            Messenger::stderr()
        };
        Ok(Console {
            editor,
            prompt,
            history,
            history_ready: false,
            abandoned,
            prompt_waker: PromptWaker::new(),
            messenger,
            stdout_is_terminal,
        })
    }

    pub fn messenger(&self) -> Messenger {
        self.messenger.clone()
    }

    pub fn prompt_waker(&self) -> PromptWaker {
        self.prompt_waker.clone()
    }

    /// Prompts until the user gives a line (or lines), ends the session, or a [`PromptWaker`] fires.
    pub fn read(&mut self) -> Result<Input, Failure> {
        loop {
            if self.prompt_waker.requested() {
                self.prompt_waker.notice();
                return Ok(Input::Woken);
            }
            self.abandoned.store(false, Ordering::SeqCst);
            match self.editor.readline(&self.prompt) {
                Ok(text) => {
                    let lines = split_lines(&text);
                    self.remember(&lines);
                    return Ok(Input::Lines(lines));
                }
                Err(ReadlineError::Interrupted) if self.prompt_waker.requested() => {
                    self.prompt_waker.notice();
                    return Ok(Input::Woken);
                }
                Err(ReadlineError::Interrupted) if self.abandoned.load(Ordering::SeqCst) => {}
                Err(ReadlineError::Eof | ReadlineError::Interrupted) => return Ok(Input::End),
                Err(e) => return Err(Failure::Error(format!("cannot read the terminal: {e}"))),
            }
        }
    }

    /// Adds the non-empty lines to the history and appends them to the file at once.
    fn remember(&mut self, lines: &[String]) {
        let mut added = false;
        for line in lines.iter().filter(|l| !l.is_empty()) {
            added |= self
                .editor
                .add_history_entry(line.as_str())
                .unwrap_or(false);
        }
        let Some(path) = self.history.clone() else {
            return;
        };
        if !added {
            return;
        }
        if !self.history_ready {
            if let Err(e) = prepare_history_file(&path) {
                eprintln!(
                    "cannot keep the history in {}: {e}; history is off",
                    path.display()
                );
                self.history = None;
                return;
            }
            self.history_ready = true;
        }
        if let Err(e) = self.editor.append_history(&path) {
            eprintln!(
                "cannot write the history {}: {e}; history is off",
                path.display()
            );
            self.history = None;
        }
    }

    /// Shows a reply: with its round-trip time on a terminal; as bare bytes and a newline in a
    /// pipeline, where it is data.
    pub fn reply(&self, bytes: &[u8], rtt: Duration) -> Result<(), Failure> {
        let mut out = io::stdout().lock();
        let written = if self.stdout_is_terminal {
            writeln!(
                out,
                "{}  ({})",
                super::display::printable(bytes),
                super::display::rtt(rtt)
            )
        } else {
            out.write_all(bytes).and_then(|()| out.write_all(b"\n"))
        };
        written
            .and_then(|()| out.flush())
            .map_err(|e| Failure::stdout(&e))
    }
}

/// Creates the history's directory and file private to the user (typed lines can be secrets),
/// leaving an existing file's mode alone.
fn prepare_history_file(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paste_of_several_lines_is_several_messages() {
        assert_eq!(split_lines("one"), ["one"]);
        assert_eq!(split_lines("one\ntwo\nthree"), ["one", "two", "three"]);
        assert_eq!(split_lines("one\ntwo\n"), ["one", "two"]);
        assert_eq!(split_lines("one\n\nthree"), ["one", "", "three"]);
        assert_eq!(split_lines(""), [""]);
        assert_eq!(split_lines("\n"), [""]);
    }
}
