//! `upecho man`: one roff page for the whole tool, generated from the clap definitions.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::CommandFactory;

use super::Cli;

/// The man page's ENVIRONMENT and FILES sections, in roff.
const MAN_TAIL: &str = r#".SH ENVIRONMENT
.TP
.B RUST_LOG
Log filter for the messages on stderr, as in env_logger: \fBdebug\fR for one line per connection,
\fBtrace\fR for more, \fBwarn\fR for quiet. The default is \fBinfo\fR for serve and load,
\fBwarn\fR for the clients.
.TP
.B XDG_STATE_HOME
Where the interactive clients keep their line history (see FILES).
.SH FILES
.TP
.I $XDG_STATE_HOME/upecho/history
History of the lines typed at the interactive \fBtcp\fR and \fBudp\fR prompts, shared by both;
\fI~/.local/state/upecho/history\fR when XDG_STATE_HOME is not set. Not written with
\fB\-\-no\-history\fR.
"#;

/// One man page for the whole tool, its subcommands included, as `man upecho` readers expect.
pub(crate) fn print_man() -> ExitCode {
    let cmd = Cli::command();
    let mut page = Vec::new();
    let result = render_man(&cmd, &mut page).and_then(|()| {
        let mut out = io::stdout().lock();
        out.write_all(&page).and_then(|()| out.flush())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("upecho man: cannot write the man page: {e}");
            ExitCode::FAILURE
        }
    }
}

fn render_man(cmd: &clap::Command, out: &mut Vec<u8>) -> io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    // A section per subcommand with its own options: the default page names the subcommands only,
    // which leaves a reader of `man upecho` no way to learn their flags.
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("upecho {}", sub.get_name());
        writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
        let mut part = Vec::new();
        let sub_man = clap_mangen::Man::new(sub.clone().bin_name(name));
        sub_man.render_synopsis_section(&mut part)?;
        sub_man.render_description_section(&mut part)?;
        sub_man.render_options_section(&mut part)?;
        // clap_mangen renders whole sections; inside ours they become subsections.
        for line in String::from_utf8_lossy(&part).lines() {
            match line {
                ".SH SYNOPSIS" | ".SH DESCRIPTION" => writeln!(out, ".PP")?,
                ".SH OPTIONS" => writeln!(out, ".SS Options")?,
                _ => writeln!(out, "{line}")?,
            }
        }
    }
    // Written by hand: clap_mangen would title the after_help text "EXTRA".
    out.write_all(MAN_TAIL.as_bytes())?;
    man.render_version_section(out)?;
    Ok(())
}
