"""HM3's architecture-level search: a preference-conditioned policy over paths, trained with PPO.

The policy maps lambda [K] to one categorical distribution per depth over the block sources, and
a value (the baseline of the advantages). Its logits are an MLP of lambda plus a linear term in
lambda that starts at `prior` x lambda_k on the source finetuned:<task k> (both learned): the
search starts near uniform at the equal preference and near the fine-tuned model at a vertex,
where a uniform start would need hundreds of draws to meet it once. An episode is one step: draw a member (its lambda), draw
a path, receive the path's reward. PPO's clipped objective on the path's log-probability (the sum
over depths), advantages R - V(lambda) standardised per batch, an entropy bonus and the value's
squared error."""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from models_store.flags import KeyValueModel


class PPOConfig(KeyValueModel):
    batch: int = Field(64, ge=2, description="episodes per policy update")
    epochs: int = Field(4, ge=1, description="passes of PPO over each batch")
    lr: float = Field(3e-3, gt=0, description="Adam's learning rate of the policy and value")
    clip: float = Field(0.2, gt=0, description="PPO's clipping of the probability ratio, 1 +- clip")
    entropy: float = Field(0.01, ge=0, description="weight of the entropy bonus")
    value_weight: float = Field(0.5, ge=0, description="weight of the value's squared error")
    hidden: int = Field(64, ge=1, description="width of the policy's two hidden layers")
    prior: float = Field(2.0, ge=0, description="initial logit of finetuned:<task k> per unit of lambda_k (0: start "
                                                "uniform)")


class PathPolicy(nn.Module):
    def __init__(self, tasks: int, depth: int, sources: int, hidden: int, prior: float):
        super().__init__()
        self.depth, self.sources = depth, sources
        self.body = nn.Sequential(nn.Linear(tasks, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.logits = nn.Linear(hidden, depth * sources)
        self.linear = nn.Linear(tasks, depth * sources, bias=False)
        self.value = nn.Linear(hidden, 1)
        nn.init.zeros_(self.logits.weight)  # the MLP's part starts at zero
        nn.init.zeros_(self.logits.bias)
        with torch.no_grad():  # sources are merge, finetuned:<task 1..K>, [skip]
            start = torch.zeros(depth, sources, tasks)
            start[:, 1:tasks + 1] = prior * torch.eye(tasks)
            self.linear.weight.copy_(start.view(depth * sources, tasks))

    def forward(self, prefs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """prefs [B, K] -> logits [B, depth, sources], value [B]."""
        h = self.body(prefs)
        logits = self.logits(h) + self.linear(prefs)
        return logits.view(-1, self.depth, self.sources), self.value(h).squeeze(-1)

    def greedy(self, prefs: torch.Tensor) -> torch.Tensor:
        """[B, depth] the most likely source at every depth."""
        with torch.no_grad():
            return self(prefs)[0].argmax(-1)


def log_prob(logits: torch.Tensor, paths: torch.Tensor) -> torch.Tensor:
    """[B] log pi(path | lambda): the sum over depths."""
    return torch.log_softmax(logits, -1).gather(-1, paths.unsqueeze(-1)).squeeze(-1).sum(-1)


def sample(policy: PathPolicy, prefs: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Paths [B, depth] drawn from the policy, and their log-probabilities [B]."""
    with torch.no_grad():
        logits, _ = policy(prefs)
        probs = torch.softmax(logits, -1).view(-1, policy.sources)
        paths = torch.multinomial(probs, 1, generator=generator).view(-1, policy.depth)
        return paths, log_prob(logits, paths)


def ppo_update(policy: PathPolicy, optimizer: torch.optim.Optimizer, prefs: torch.Tensor, paths: torch.Tensor,
               old_log_prob: torch.Tensor, rewards: torch.Tensor, config: PPOConfig) -> dict[str, float]:
    """`config.epochs` passes of the clipped objective over one batch of episodes."""
    with torch.no_grad():
        advantages = rewards - policy(prefs)[1]
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    for _ in range(config.epochs):
        logits, value = policy(prefs)
        ratio = torch.exp(log_prob(logits, paths) - old_log_prob)
        clipped = torch.clamp(ratio, 1 - config.clip, 1 + config.clip)
        policy_loss = -torch.min(ratio * advantages, clipped * advantages).mean()
        entropy = torch.distributions.Categorical(logits=logits).entropy().sum(-1).mean()
        value_loss = (value - rewards).pow(2).mean()
        loss = policy_loss - config.entropy * entropy + config.value_weight * value_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {"policy_loss": policy_loss.item(), "entropy": entropy.item(), "value_loss": value_loss.item()}
