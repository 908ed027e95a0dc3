//! A conversation's earlier turns as messages for the next request, within a token budget.
//!
//! A turn is one earlier `llm.chat` task of the same owner and `conversation_id` that
//! succeeded: its input's user and assistant messages (its system messages stay with it),
//! then its answer as an assistant message. Turns are taken newest first while they fit
//! the budget and sent oldest first, so the oldest are the ones dropped. A turn that does
//! not fit whole is dropped whole. Tokens are estimated, not counted: every provider
//! tokenises differently, and a character count divided by 4 (rounded up) is the usual
//! rule of thumb for English text; other scripts may need a smaller budget.

use chronicle_aggregates::task::{TaskState, TaskStatus};
use chronicle_commands::llm_chat::{ChatMessage, LlmChatInput, Role};
use serde_json::Value;

/// The estimated tokens of `text`: characters / 4, rounded up.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// The messages one earlier task contributes, or `None` when it has no answer.
pub fn turn_messages(task: &TaskState) -> Option<Vec<ChatMessage>> {
    if task.status != TaskStatus::Succeeded {
        return None;
    }
    let answer = task
        .output
        .as_ref()
        .and_then(|output| output.get("content"))
        .and_then(Value::as_str)?;
    let input = LlmChatInput::parse(&task.input).ok()?;
    let mut messages: Vec<ChatMessage> = input
        .messages
        .into_iter()
        .filter(|message| message.role != Role::System)
        .collect();
    messages.push(ChatMessage {
        role: Role::Assistant,
        content: answer.to_owned(),
    });
    Some(messages)
}

/// The turns (oldest first) that fit `budget` estimated tokens, newest kept first, as one
/// list of messages oldest first; and how many turns were dropped.
pub fn fit(turns: Vec<Vec<ChatMessage>>, budget: u64) -> (Vec<ChatMessage>, usize) {
    let mut kept: Vec<Vec<ChatMessage>> = Vec::new();
    let mut used = 0u64;
    let total = turns.len();
    for turn in turns.into_iter().rev() {
        let cost: u64 = turn.iter().map(|m| estimate_tokens(&m.content)).sum();
        if used + cost > budget {
            // Older turns would leave a gap before this one: stop here.
            break;
        }
        used += cost;
        kept.push(turn);
    }
    let dropped = total - kept.len();
    kept.reverse();
    (kept.into_iter().flatten().collect(), dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(user: &str, answer: &str) -> Vec<ChatMessage> {
        vec![
            ChatMessage {
                role: Role::User,
                content: user.into(),
            },
            ChatMessage {
                role: Role::Assistant,
                content: answer.into(),
            },
        ]
    }

    #[test]
    fn estimates_round_up() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abc"), 1);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("éééé"), 1);
    }

    #[test]
    fn the_oldest_turns_are_dropped_first() {
        // 2 + 1 tokens a turn.
        let turns = vec![
            turn("one.....", "a"),
            turn("two.....", "b"),
            turn("three...", "c"),
        ];
        let (messages, dropped) = fit(turns.clone(), 6);
        assert_eq!(dropped, 1);
        let contents: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, ["two.....", "b", "three...", "c"]);
        assert_eq!(fit(turns.clone(), 9).1, 0);
        assert_eq!(fit(turns.clone(), 2), (Vec::new(), 3));
    }
}
