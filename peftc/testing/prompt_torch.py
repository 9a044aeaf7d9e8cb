"""The deep-prompt forward of peftc.prompt written in torch over a transformers BertModel (a manual
layer loop), the autograd oracle for the prompt tests and the other side of bench_prompt_step.

The caller passes the torch module in, so importing this file does not import torch."""
from __future__ import annotations


def torch_prompted_features(torch, hf, ids, mask, types, pool_mask, prompts):
    """Unit-norm pooled features (B, H) with deep prompts (J, n, H) written at positions 1..n.

    hf: a transformers BertModel (eager attention); ids, mask, types, pool_mask: int64 tensors
    (B, T) holding the prompt slots; prompts: a float tensor, usually requires_grad.
    """
    emb = hf.embeddings
    depth, n = prompts.shape[0], prompts.shape[1]
    b, t = ids.shape
    words = emb.word_embeddings(ids)
    words = torch.cat([words[:, :1], prompts[0].unsqueeze(0).expand(b, n, -1), words[:, 1 + n:]], dim=1)
    pos = emb.position_embeddings(torch.arange(t))[None]
    x = emb.dropout(emb.LayerNorm(words + pos + emb.token_type_embeddings(types)))
    additive = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
    for j, layer in enumerate(hf.encoder.layer):
        if 1 <= j < depth:
            x = torch.cat([x[:, :1], prompts[j].unsqueeze(0).expand(b, n, -1), x[:, 1 + n:]], dim=1)
        out = layer(x, attention_mask=additive)
        x = out[0] if isinstance(out, tuple) else out
    m = pool_mask[..., None].to(x.dtype)
    return torch.nn.functional.normalize((x * m).sum(1) / m.sum(1), dim=1)
