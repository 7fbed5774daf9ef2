//! Prompt text for tasks: the training user message (DiffuCoder's `make_conversation`) and
//! the evaluation templates of the paper (Tables 5 and 6). The chat template itself is
//! [`crate::model::chat_prompt`]; these functions produce its `user` and prefill arguments.

use super::{Task, TaskSource};
use crate::{Error, Result};

/// System prompt of training and evaluation (`system_prompt` in the released config).
pub const SYSTEM_PROMPT: &str = "You are a helpful assistant.";

/// Assistant prefill of the evaluation templates: the model continues inside the fence
/// (its first generated token is normally the newline after `python`).
pub const EVAL_ASSISTANT_PREFILL: &str = "Here is the code to solve this problem:\n```python";

/// The training user message: the question, plus `"\nTest cases: " + tests[0]` unless the
/// question already holds a bare fence line (`"\n```\n"`, e.g. the augmented AceCoder rows).
/// A task without tests gets the bare question.
pub fn user_message(task: &Task) -> String {
    match task.tests.first() {
        Some(first) if !task.question.contains("\n```\n") => {
            format!("{}\nTest cases: {}", task.question, first)
        }
        _ => task.question.clone(),
    }
}

/// HumanEval / BigCodeBench-C user message: the instruction and the fenced prompt.
pub fn humaneval_user_message(prompt: &str) -> String {
    format!(
        "Please complete the following problem:\n```\n{}\n```",
        prompt.trim_end()
    )
}

/// MBPP / BigCodeBench-I user message: the fenced prompt alone.
pub fn mbpp_user_message(prompt: &str) -> String {
    format!("```\n{}\n```", prompt.trim_end())
}

/// The MBPP prompt in EvalPlus's form: a docstring holding the description and the first
/// test, which names the function and shows its signature by example.
pub fn mbpp_prompt(text: &str, first_test: &str) -> String {
    format!("\"\"\"\n{text}\n{first_test}\n\"\"\"\n")
}

/// The evaluation user message for a HumanEval or MBPP task.
pub fn eval_user_message(task: &Task) -> Result<String> {
    match task.source {
        TaskSource::HumanEval => Ok(humaneval_user_message(&task.question)),
        TaskSource::Mbpp => {
            let first = task.tests.first().ok_or_else(|| {
                Error::invalid("task", format!("{}: MBPP task without tests", task.id))
            })?;
            Ok(mbpp_user_message(&mbpp_prompt(&task.question, first)))
        }
        other => Err(Error::invalid(
            "task",
            format!(
                "{}: no evaluation template for {other:?} tasks (HumanEval and MBPP have one)",
                task.id
            ),
        )),
    }
}

/// The program a completion generated after [`EVAL_ASSISTANT_PREFILL`] stands for: the text
/// up to the closing fence (or all of it when the model never closed the fence), without the
/// newline that ends the prefill's fence line.
pub fn code_after_prefill(completion: &str) -> &str {
    let code = completion.strip_prefix('\n').unwrap_or(completion);
    let code = code.strip_prefix("\r\n").unwrap_or(code);
    match code.find("```") {
        Some(end) => &code[..end],
        None => code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(question: &str, tests: &[&str], source: TaskSource) -> Task {
        Task {
            id: "t".into(),
            question: question.into(),
            tests: tests.iter().map(|s| s.to_string()).collect(),
            entry_point: None,
            reference_solution: None,
            source,
        }
    }

    #[test]
    fn training_message_follows_make_conversation() {
        let t = task(
            "Add two numbers.",
            &["assert add(1, 2) == 3", "assert add(0, 0) == 0"],
            TaskSource::AceCoder,
        );
        assert_eq!(
            user_message(&t),
            "Add two numbers.\nTest cases: assert add(1, 2) == 3"
        );
        let fenced = task(
            "Please complete the following problem:\n```\ndef add(a, b):\n```\n",
            &["assert add(1, 2) == 3"],
            TaskSource::AceCoder,
        );
        assert_eq!(user_message(&fenced), fenced.question);
        // A ```python fence is not the bare fence line the rule looks for.
        let py = task(
            "x\n```python\nf()\n```",
            &["assert f()"],
            TaskSource::AceCoder,
        );
        assert!(user_message(&py).ends_with("\nTest cases: assert f()"));
        assert_eq!(user_message(&task("q", &[], TaskSource::Custom)), "q");
    }

    #[test]
    fn eval_templates() {
        let he = task(
            "def add(a, b):\n    \"\"\"Add.\"\"\"\n",
            &["..."],
            TaskSource::HumanEval,
        );
        assert_eq!(
            eval_user_message(&he).unwrap(),
            "Please complete the following problem:\n```\ndef add(a, b):\n    \"\"\"Add.\"\"\"\n```"
        );
        let mb = task(
            "Write a function to add.",
            &["assert add(1, 2) == 3"],
            TaskSource::Mbpp,
        );
        assert_eq!(
            eval_user_message(&mb).unwrap(),
            "```\n\"\"\"\nWrite a function to add.\nassert add(1, 2) == 3\n\"\"\"\n```"
        );
        assert!(eval_user_message(&task("q", &["a"], TaskSource::AceCoder)).is_err());
        assert_eq!(
            EVAL_ASSISTANT_PREFILL,
            "Here is the code to solve this problem:\n```python"
        );
    }

    #[test]
    fn code_after_the_prefill() {
        assert_eq!(
            code_after_prefill("\ndef f():\n    return 1\n```\nDone."),
            "def f():\n    return 1\n"
        );
        assert_eq!(code_after_prefill("\ndef f(): pass"), "def f(): pass");
    }
}
