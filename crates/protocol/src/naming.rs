//! Where a checkpoint tensor sits: its layer and its module, read from its name.
//!
//! Shared by the planner (which shard owns a tensor) and the executor (which tensors a shard
//! reads), so both sides agree without either loading a model.

/// The transformer block index in names like `model.layers.7.mlp.up_proj.weight`,
/// `transformer.h.7.attn.c_attn.weight` or `h.7.ln_1.bias`.
pub fn layer_of(name: &str) -> Option<usize> {
    let parts: Vec<&str> = name.split('.').collect();
    parts.windows(2).find_map(|w| match w[0] {
        "layers" | "h" | "blocks" | "layer" => w[1].parse().ok(),
        _ => None,
    })
}

/// The module path inside its block, without the parameter name: `mlp.up_proj` for
/// `model.layers.7.mlp.up_proj.weight`; for tensors outside the blocks, the name without its
/// model prefix (`embed_tokens`, `wte`, `lm_head`, `norm`).
pub fn module_of(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    let start = parts
        .windows(2)
        .position(|w| {
            matches!(w[0], "layers" | "h" | "blocks" | "layer") && w[1].parse::<usize>().is_ok()
        })
        .map(|i| i + 2)
        .unwrap_or_else(|| usize::from(matches!(parts.first(), Some(&("model" | "transformer")))));
    let end = match parts.last() {
        Some(&("weight" | "bias")) if parts.len() > start + 1 => parts.len() - 1,
        _ => parts.len(),
    };
    parts[start..end].join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_and_modules() {
        let cases = [
            ("model.layers.7.mlp.up_proj.weight", Some(7), "mlp.up_proj"),
            (
                "model.layers.12.self_attn.q_proj.bias",
                Some(12),
                "self_attn.q_proj",
            ),
            ("transformer.h.3.attn.c_attn.weight", Some(3), "attn.c_attn"),
            ("h.0.ln_1.bias", Some(0), "ln_1"),
            ("model.embed_tokens.weight", None, "embed_tokens"),
            ("transformer.wte.weight", None, "wte"),
            ("lm_head.weight", None, "lm_head"),
            ("model.norm.weight", None, "norm"),
            (
                "base_model.model.model.layers.2.self_attn.v_proj.lora_A.weight",
                Some(2),
                "self_attn.v_proj.lora_A",
            ),
        ];
        for (name, layer, module) in cases {
            assert_eq!(layer_of(name), layer, "{name}");
            assert_eq!(module_of(name), module, "{name}");
        }
    }
}
