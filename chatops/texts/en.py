"""English: every sentence the core composes, by key. Values are `str.format` templates; the keys and
the placeholder names match `zh.py` (tests/test_texts.py checks), so a new sentence is added to both."""

from __future__ import annotations

TEXTS: dict[str, str] = {
    # -- router: the door, the parser's refusals, confirmation -------------------------------------
    "router.internal_error": "Internal error (ref {ref}); the details are in the bot's log.",
    "router.nothing_to_confirm": "Nothing to confirm. A command that asks can carry its yes: stop 3f2a --yes",
    "router.cancelled": "Cancelled.",
    "router.unknown_command": "Unknown command '{word}'.",
    "router.did_you_mean": " Did you mean {hint}?",
    "router.send_help": " Send help for the list.",
    "router.confirm_yes": "Yes",
    "router.confirm_cancel": "Cancel",
    "router.reply_yes": " Reply yes to confirm.",
    "router.unreadable": "Could not read your message: {why}",
    "router.secret": "This message holds one of the bot's secrets, so it was not run. Whoever can read this chat"
    " has seen it: rotate that secret.",
    "router.too_long": "Message too long ({size} characters; the limit is {limit}).",
    "router.slow_down": "Slow down: {who} sent more messages than the bot takes in a minute. Messages are not read"
                        " for the next {seconds} s; send again after that.",
    "router.not_allowed": "Sorry, {who} is not allowed to use this bot. Ask an admin to add you.",
    "router.needs_role": "Sorry, {command} needs the {needed} role; {who} is {role}.",
    "router.duplicate": "{keys}: given more than once",
    "router.no_parameter": "{command} takes no parameter '{key}'",
    "router.invalid_args": "",
    "router.no_parameter_hint": " (did you mean {hint}?)",
    "router.unexpected": "{command}: unexpected '{extra}'. Usage: {usage}",
    # -- finding a job, kinds, parameters ------------------------------------------------------------
    "job.not_found": "{error}. Send jobs for the list.",
    "job.refused": "{error}",
    "pick.which": "{n} jobs could be meant; which one? Send {verb} <id>:\n{jobs}",
    "pick.none": "No matching job for {verb}. Send jobs for the list.",
    "kind.unavailable": "{error}",
    "kind.command_line": "{kind} jobs start from the command line (chatops wrap), never from chat: their "
    "command is the local user's to choose.",
    "kind.unknown": "Unknown job kind '{kind}'. Kinds: {names} (kinds come from {config})",
    "kind.no_config": "the built-in defaults: no config file was found (--config, CHATOPS_CONFIG or ./chatops.toml)",
    "kinds.default": " (default)",
    "kinds.broken": "{name} (unavailable: {problem})",
    "params.invalid": "",
    "params.more": "... and {n} more",
    "params.header": "Parameters of {kind} (saved values marked *, live = changeable while running):",
    "params.job": "Parameters of job {job} ({kind}):",
    "params.other_kinds": "other kinds: {kinds} (params <kind>)",
    # -- help ----------------------------------------------------------------------------------------
    "help.header": "Commands:",
    "help.footer": "help <command> for details; parameters as key=value, or one 'key value' per line.",
    "help.no_command": "No command '{name}'. Send help for the list.",
    "help.aliases": "aliases: {aliases}",
    "help.role": "role: {role}",
    "help.confirm": "asks to confirm (reply yes); add --yes to skip the question, as with "
                    "chatops send \"{example} --yes\"",
    "help.parameters": "parameters: see params (key=value, or one 'key value' per line)",
    "help.kinds": "kinds: {kinds}",
    "help.examples": "examples: {examples}",
    # -- set, train ----------------------------------------------------------------------------------
    "set.nothing": "Nothing to set. Example: set lr=0.01",
    "set.no_sdk": "Job {id} runs its script as a command (kind {kind}): its parameters cannot change while it "
                  "runs. A script that calls jobs.sdk.run_main can take set.",
    "set.not_live": "{fields} cannot change while job {id} runs (live: {live}).",
    "set.none_live": "none",
    "set.asked": "job {id}: asked to set {values}; it applies at the next batch.",
    "set.saved": "Saved for the next train here: {values}",
    "unset.nothing": "Nothing to forget. Example: unset lr (or unset all)",
    "unset.unknown": "Not a parameter: {names}. Send params to see them.",
    "unset.did_you_mean": "did you mean {name}?",
    "unset.none_saved": "Nothing saved here for {names}: the defaults apply already.",
    "unset.done": "Forgotten here: {names}. The next train uses the defaults for them.",
    "set.running_hint": "\njob {id} is training: to change it now, send {command}",
    "train.wrong_kind": "job {id} is a {kind} job; resume it as one.",
    "train.give_changes": "job {id} succeeded; to train on from its last checkpoint give what changes, e.g. "
                          "train resume={id} epochs=20",
    "train.no_checkpoint": "job {id} succeeded and kept no checkpoint.",
    "train.queued": "job {id} queued (position {pos}): training is underway ({running}). "
                    "It starts when a slot frees.",
    "train.started": "job {id} started: {summary}",
    "train.from_checkpoint": " It trains on from job {source}'s checkpoint {checkpoint}.",
    # -- stop, pause, resume -------------------------------------------------------------------------
    "stop.ended": "job {id} already ended ({state}).",
    "stop.confirm": "Stop job {id} ({state}, {summary})?",
    "stop.cancelled": "job {id} cancelled before it started.",
    "stop.stopping": "job {id} stopping at the next batch; a checkpoint is kept.",
    "stop.stopping_bare": "job {id} stopping.",
    "pause.pausing": "job {id} pausing at the next batch.",
    "resume.pause_cancelled": "job {id}: the pause it had not reached yet is cancelled; it trains on.",
    "resume.resuming": "job {id} resuming.",
    "resume.from_checkpoint": "job {id} {state}: continuing from its last checkpoint.",
    # -- status, jobs, logs, plot, follow, whoami ----------------------------------------------------
    "status.head": "job {id}: {state}  {kind}: {summary}",
    "status.owner": "owner {owner}",
    "status.runner": "runner: {resources}",
    "status.where": "on the cluster: {where}",
    "status.queue_position": "queue position {n}",
    "status.error": "error: {error}",
    "status.waiting": "{error}",
    "status.gpus": "holds {gpus}",
    "status.checkpoint": "checkpoint: {checkpoint}",
    "status.code": "code {code}",
    "status.no_code": "code: {why}",
    "status.artifacts": "artifacts: {artifacts}",
    "status.folder": "folder: {dir} (TensorBoard: {dir}/tensorboard)",
    "jobs.none": "No jobs yet. Start one with: train epochs=5",
    "jobs.line": "job {id}  {state:<9} {kind}: {summary}{extra}  ({age} ago, by {owner})",
    "jobs.line_epoch": " epoch {done}",
    "logs.head": "job {id} log (last {n} lines):",
    "logs.empty": "(empty)",
    "plot.no_metrics": "job {id} has no metrics to plot yet.",
    "plot.caption": "job {id} curves",
    "follow.added": "Following job {id}.",
    "follow.already": "Already following job {id}.",
    "unfollow.removed": "Stopped following job {id}.",
    "unfollow.not_following": "Not following job {id}.",
    "whoami.identity": "{who}{name}: role {role}",
    # -- exit ----------------------------------------------------------------------------------------
    "exit.confirm": "Shut the bot down? {n} running job(s) train on without it.",
    "exit.done": "Shutting the bot down; running jobs train on. Start it again with: chatops run",
    "audit.none": "No audit entries match.",
    "audit.usage": "Usage: audit [n] [identity, person or command], n at most {most}; e.g. audit 50 stop",
    # -- job buttons: the label, and the command a press sends ---------------------------------------
    "button.pause": "Pause",
    "button.resume": "Resume",
    "button.stop": "Stop",
    "command.pause": "pause",
    "command.resume": "resume",
    "command.stop": "stop",
    # -- what followers are told ---------------------------------------------------------------------
    "event.paused": "job {id} paused (epoch {epoch})",
    "event.resumed": "job {id} resumed (epoch {epoch})",
    "event.param_changed": "job {id}: {name} {old} -> {new}",
    "event.param_rejected": "job {id}: {name} not changed: {reason}",
    "event.resuming": "job {id} starting again (run {run})",
    "event.stall": "job {id}: no progress and no new output for {quiet}; it may be stuck. Last output line:\n{line}",
    "event.stall_silent": "job {id}: no progress and no output at all for {quiet}; it may be stuck.",
    "event.reporting": "job {id} is reporting again (after {quiet} without progress).",
    "final.no_figures": "no figures reported",
    "final.succeeded": "job {id} {state} in {took}: {metrics}",
    "final.stopped": "job {id} {state}.",
    "final.stopped_at": "job {id} {state} at epoch {epoch}.",
    "final.kept": " Checkpoint kept: {checkpoint}. Continue with: train resume={id}",
    "final.ended": "job {id} {state}: {error}",
    "final.no_reason": "no reason given",
    "export.none": "job {id} has no checkpoint to export yet.",
    "export.outside": "job {id}'s checkpoint is outside its folder; not sent.",
    "export.symbol_sent": "job {id}: the {which} checkpoint as a network that loads without its code ({size}):"
                          " gluon.SymbolBlock.imports(\"{symbol}\", [\"data\"], \"{weights}\").",
    "export.symbol_path": "job {id}: the {which} checkpoint as a network that loads without its code ({size};"
                          " gluon.SymbolBlock.imports with input \"data\") stays on the server (too large, or this"
                          " platform takes no files):",
    "export.unreadable": "job {id}: its checkpoint could not be read ({error}).",
    "export.fallback": "{damage}; exporting the latest intact checkpoint, {which}, instead.",
    "export.sent": "job {id}: the {which} checkpoint's parameters ({size}; load them with net.load_parameters).",
    "export.path": "job {id}: the {which} checkpoint's parameters ({size}) stay on the server (too large, or"
                   " this platform takes no files):",
    "compare.usage": "Name 2 to {most} jobs, or a sweep: compare 3f2a 4b1c, compare s3f2a",
    "compare.head": "Comparing {ids} (parameters that differ, then the latest metrics):",
    # -- people: linked identities, ownership, quotas, notification preferences ------------------------
    "whoami.linked": "\nthe same person as: {ids}",
    "whoami.person": "\nperson: {person}",
    "link.code": "Your link code: {code}. It works once, for 10 minutes: send link {code} from your other account"
                 " (another platform) and both are one person.",
    "link.sent_privately": "Your link code was sent to you in a private chat with the bot (a code read by others"
                           " would let them act as you).",
    "link.needs_role": "Only an account the bot knows can ask for a link code: send link there, then send"
                       " link <code> here.",
    "link.done": "Linked: {who} and {other} are one person now ({ids}); your role: {role}.",
    "link.bad_code": "That link code is not valid (mistyped, or used already). Ask for a new one: send link from"
                     " your other account.",
    "link.expired": "That link code has expired (a code lasts 10 minutes). Ask for a new one.",
    "link.too_many": "Too many wrong link codes from {who}; try again in 10 minutes.",
    "link.locked": "Too many wrong link codes were sent to this bot lately; linking is paused for up to 10 minutes."
                   " Try again later.",
    "link.same": "That code is this account's own; send it from your other account.",
    "link.already": "{who} and {other} are linked already.",
    "link.declared": "{other} is {theirs} in the config and you are {person}; people named in the config are not"
                     " merged in chat.",
    "unlink.done": "{identity} is no longer linked (it was part of {person}).",
    "unlink.declared": "{identity} belongs to {person} in the config ([people.{person}]); remove it there.",
    "unlink.not_linked": "{identity} is not linked to anyone.",
    "unlink.not_yours": "{identity} is not one of your identities (see whoami).",
    "own.refused": "job {id} belongs to {owner}; operators control only their own jobs (an admin may; or set"
                   " [auth] operators_control = \"all\").",
    "quota.queued": "Refused: you have {n} job(s) waiting and {running} running; one person may have {most}"
                    " waiting. Wait for one to start, or stop one.",
    "quota.gpus": "This job asks for {need} GPU(s); one person may hold at most {most}.",
    "jobs.none_mine": "You have no jobs. Start one with: train epochs=5",
    "notify.usage": "notify all | quiet (final reports only) | digest 10m (progress every 10 minutes)\n"
    "notify targets | notify add <apprise-url> | notify remove <n>: your own push targets (ntfy, Pushover, Gotify,"
    " a JSON hook …), told of the jobs you start",
    "notify.add_usage": "notify add <apprise-url>, one URL, e.g. notify add ntfys://ntfy.sh/my-topic"
    " (add ?chatops_level=alerts or ?chatops_level=all&chatops_digest=10m for more than final reports)",
    "notify.add_role": "Only operators add notification targets (a target is told of the jobs you start);"
    " you are {role}.",
    "notify.add_off": "Notification targets are not added in chat on this bot ([notify] chat_targets = 0):"
    " ask an admin to put yours in its config ([people.<name>] targets).",
    "notify.add_full": "You have {most} notification targets, the most one person may add here:"
    " notify remove <n> one of them first.",
    "notify.added": "Notification target {n} added: {shown}, told the {what} of the jobs you start.",
    "notify.added_again": "You have that notification target already: {n}. {shown}, told the {what}.",
    "notify.targets_none": "You have no notification targets of your own. notify add <apprise-url> adds one"
    " (ntfy, Pushover, Gotify, a JSON hook …).",
    "notify.targets_head": "Your notification targets (notify remove <n> takes one out):",
    "notify.config_head": "From the config (changed there):",
    "notify.for_every_job": "every job",
    "notify.for_your_jobs": "your jobs",
    "notify.remove_usage": "notify remove <n> (or test <n>): the number notify targets shows ({count} of yours)",
    "notify.remove_none": "You have no target {n} of your own: notify targets lists yours ({count}).",
    "notify.test_push": "chatops test: pushes for the jobs {who} starts come here.",
    "notify.test_sent": "A test push is on its way to target {n}, {shown}. Nothing within a minute? The URL is"
    " wrong or the service refuses it: the bot's log names the target and the reason.",
    "notify.removed": "Notification target {n} removed: {shown}.",
    "notify.level_final": "final reports",
    "notify.level_alerts": "final reports and alerts",
    "notify.level_all": "final reports, alerts and progress every {every}",
    "notify.all": "This conversation gets every progress update again.",
    "notify.quiet": "Quiet: this conversation gets final reports only (and alerts it asked for).",
    "notify.digest": "Digest: progress here at most every {every}, as new messages; final reports at once.",
    "mute.done": "job {id} is muted here: no progress from it; its final report still comes.",
    "mute.already": "job {id} is muted here already.",
    "unmute.done": "job {id} is no longer muted here.",
    "unmute.not_muted": "job {id} is not muted here.",
    # -- sweeps -------------------------------------------------------------------------------------
    "sweep.usage": "Give parameters several values: sweep lr=0.01,0.03,0.1 bs=32,64 (a grid), sweep"
                   " lr=1e-3..1e-1:5log (a range), or ranges with samples=8 (a random search).",
    "sweep.refused": "Sweep refused; nothing was queued:",
    "sweep.started": "sweep {id} started: {n} jobs of {kind} ({mode}) varying {varying}; {counts}. Its table is"
                     " kept up to date here; status {id} shows it, stop {id} stops every job of it.",
    "sweep.grid": "grid",
    "sweep.random": "random search",
    "sweep.count": "{n} {state}",
    "sweep.head": "sweep {id} ({kind}, {mode}, {n} jobs): {counts}",
    "sweep.best_so_far": "best so far: job {job} {metric} {value}",
    "sweep.finished": "sweep {id} ended: {counts}, in {took}",
    "sweep.best": "best of sweep {id}: job {job} ({label}) {metric} {value}\nreproduce it with:\n{command}",
    "sweep.best_code": "best of sweep {id}: job {job} ({label}) {metric} {value}\nreproduce it with (code {code}):"
                       "\n{command}",
    "sweep.no_best": "sweep {id}: no job reported {metric}, so there is no best to name.",
    "sweep.not_found": "No sweep {ref}. Send jobs for recent jobs.",
    "sweep.stop_confirm": "Stop sweep {id}: {counts}? The queued jobs are cancelled, the running ones stop at the"
                          " next batch.",
    "sweep.ended": "sweep {id} has ended already ({counts}).",
    "sweep.stopping": "sweep {id}: stopping {n} job(s): {ids}.",
    "sweep.plot_caption": "sweep {id}: every job's curves",
    # -- alerts -----------------------------------------------------------------------------------
    "watch.usage": "Give a metric, a comparison and a number, e.g. watch 3f2a val_acc>=0.98 or watch loss<0.1"
                   " (>=, <=, >, <).",
    "watch.ended": "job {id} has ended ({state}); watch a running or queued job.",
    "watch.already": "job {id}: {metric} is {now} already ({op} {value}); nothing to wait for.",
    "watch.set": "Watching job {id}: {metric} {op} {value} (watch {n}). This conversation is told once.",
    "watch.not_reported": " job {id} has not reported {metric} yet; it reports {names}.",
    "watch.too_many": "This conversation has {n} watches, the most one conversation may have ({most}); remove some"
                      " with unwatch (see watches).",
    "watches.none": "No watches here. Example: watch 3f2a val_acc>=0.98",
    "watches.line": "watch {n}: job {id} {metric} {op} {value}",
    "watches.fired": " (told: {value})",
    "unwatch.none": "No watch {ref} here (see watches).",
    "unwatch.done": "Removed {n} watch(es).",
    "event.watch_fired": "job {id}: {metric} {now} {op} {value} (epoch {epoch}); watch {n} is done.",
    "final.early_stop": "\nStopped early at epoch {epoch} of {epochs}: {monitor} did not improve for {patience}"
                        " epochs (best {best} at epoch {best_epoch}; its checkpoint is kept as best).",
    "final.artifacts": "\nartifacts: {artifacts}",
    # -- progress and job states ---------------------------------------------------------------------
    "progress.head": "job {id} {state}",
    "progress.epoch": "epoch {epoch}/{epochs}",
    "progress.batch": "batch {batch}/{batches}",
    "progress.speed": "{rate:,.0f} samples/s",
    "progress.eta": "ETA {eta}",
    "state.queued": "queued",
    "state.starting": "starting",
    "state.running": "running",
    "state.paused": "paused",
    "state.succeeded": "succeeded",
    "state.failed": "failed",
    "state.stopped": "stopped",
    "state.lost": "lost",
    # -- a locked database, a full disk (the busy and disk notices go directly, not through the outbox)
    "router.locked": "The bot's database was locked by another chatops process, so this command did not finish"
                     " (ref {ref}). Check with status, then send it again.",
    "store.busy": "Busy, retrying: another chatops process holds the bot's database. Your message is kept and will"
                  " be answered, in order, as soon as it is free.",
    "store.disk_full": "The bot's disk is full ({where}): nothing was stored and your message was not handled."
                       " Free some space there and send it again.",
}  # fmt: skip
