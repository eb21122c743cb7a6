import torch
import torch.nn.functional as F
from torch import nn

from core.data.loading import pair_loader
from distill.memory import EmbeddingBank, FifoQueue, Memory, MomentumEncoder, PairQueues
from tests.conftest import build_tiny


def test_fifo_queue_keeps_the_newest_rows_oldest_first():
    q = FifoQueue(size=3, dim=1, n_ids=1)
    assert len(q.contents()[0]) == 0
    q.push(torch.tensor([[1.0], [2.0]]), torch.tensor([1, 2]))
    assert q.contents()[0].flatten().tolist() == [1.0, 2.0]
    q.push(torch.tensor([[3.0], [4.0]]), torch.tensor([3, 4]))
    vectors, ids = q.contents()
    assert vectors.flatten().tolist() == [2.0, 3.0, 4.0] and ids.flatten().tolist() == [2, 3, 4]
    q.push(torch.arange(5.0, 10.0)[:, None], torch.arange(5, 10))  # more than it holds: the newest 3
    assert q.contents()[0].flatten().tolist() == [7.0, 8.0, 9.0]


def test_pair_queues_hold_valid_tokens_with_their_image():
    queues = PairQueues(size=4, token_size=8, dim=2, token_dim=2)
    keys = {"img_emb": torch.ones(2, 2), "txt_emb": torch.zeros(2, 2),
            "img_local": torch.arange(12.0).reshape(2, 3, 2), "img_local_mask": torch.tensor([[1, 1, 0], [1, 0, 0]]).bool(),
            "txt_local": torch.zeros(2, 1, 2), "txt_local_mask": torch.ones(2, 1, dtype=torch.bool)}
    queues.push(keys, torch.tensor([5, 6]), torch.tensor([25, 30]))
    view = queues.view()
    assert view.image_index.tolist() == [5, 6] and view.caption_index.tolist() == [25, 30]
    assert view.img_token_image.tolist() == [5, 5, 6]
    assert view.img_tokens.tolist() == [[0.0, 1.0], [2.0, 3.0], [6.0, 7.0]]  # padded tokens never enter


def test_momentum_encoder_averages_trainable_weights_and_leaves_frozen_ones():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[1].weight.requires_grad_(False)
    momentum = MomentumEncoder(model, coefficient=0.75)
    before = [p.clone() for p in momentum.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    momentum.update(model)
    after = list(momentum.model.parameters())
    torch.testing.assert_close(after[0], 0.75 * before[0] + 0.25 * (before[0] + 1))
    torch.testing.assert_close(after[2], before[2])  # frozen: the online copy did not train it
    assert not any(p.requires_grad for p in momentum.model.parameters())


def test_coefficient_zero_queues_the_online_outputs_detached():
    online = {"img_emb": torch.ones(1, 2, requires_grad=True) * 2}
    keys = MomentumEncoder(nn.Linear(1, 1), 0.0).keys(None, online, True)
    assert not keys["img_emb"].requires_grad and torch.equal(keys["img_emb"], online["img_emb"].detach())


def test_bank_rows_are_replaced_by_the_batch():
    bank = EmbeddingBank(torch.zeros(3, 2), torch.zeros(6, 2))
    bank.push({"img_emb": torch.ones(1, 2), "txt_emb": torch.full((1, 2), 2.0)}, torch.tensor([1]), torch.tensor([4]))
    assert bank.images[1].tolist() == [1.0, 1.0] and bank.images[0].tolist() == [0.0, 0.0]
    assert bank.captions[4].tolist() == [2.0, 2.0]


def test_the_momentum_copy_runs_in_the_online_models_mode_whatever_mode_it_was_copied_in():
    online = nn.Sequential(nn.Dropout(0.5), nn.Identity()).eval()
    momentum = MomentumEncoder(online, 0.9)
    torch.manual_seed(0)
    trained = momentum.keys(torch.ones(1000), {}, training=True)
    assert (trained == 0).any()  # dropout on, though the copy was made in eval mode
    assert torch.equal(momentum.keys(torch.ones(1000), {}, training=False), torch.ones(1000))


def test_each_step_moves_a_token_level_students_banks_towards_the_batchs_valid_tokens(text_model_dir, splits):
    student = build_tiny("student", text_model_dir, memory_bank={"slots": 4, "level": "token", "momentum": 0.5})
    memory = Memory(MomentumEncoder(student, 0.0), None, None, memory_banks=True)
    loader = pair_loader(splits["train"], student.image_tower.preprocess(), student.tokenize, 6, batching="random",
                         generator=torch.Generator().manual_seed(0))
    batches, banks = iter(loader), student.token_memory
    for step in range(2):
        batch = next(batches)
        with torch.no_grad():
            keys = memory.keys(batch, student(batch), training=True)
        before = banks.text_bank.clone()
        memory.update(student, keys, batch.image_index, batch.caption_index)
        valid = F.normalize(keys["txt_tokens"][keys["txt_local_mask"]], dim=-1)
        if step == 0:  # filled from the batch's valid words, never from padding
            assert not keys["txt_local_mask"].all()
            assert torch.allclose((banks.text_bank @ valid.T).max(dim=1).values, torch.ones(4))
            continue
        assert not torch.equal(banks.text_bank, before)
        assign = (valid @ before.T).argmax(dim=1)  # each centre moved towards the mean of the words nearest it
        for slot in range(4):
            mean = F.normalize(valid[assign == slot].sum(0), dim=-1)
            if (assign == slot).any():
                assert banks.text_bank[slot] @ mean >= before[slot] @ mean - 1e-6
            else:
                assert torch.equal(banks.text_bank[slot], before[slot])
    assert float(banks.filled) == 1.0
    torch.testing.assert_close(banks.image_bank.norm(dim=1), torch.ones(4))
