from glob import glob

from setuptools import find_packages, setup

package_name = 'mmdistill_teachers'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    # the pretrained teachers (tools/pretrain_teachers.py): weights, their metadata, the manifest
    package_data={package_name: ['pretrained/*.safetensors', 'pretrained/*.json']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.py')),
        ('share/' + package_name + '/config', glob('config/*')),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='mmdistill maintainers',
    maintainer_email='maintainers@mmdistill.dev',
    description='RGB, depth and thermal teacher detectors, pseudo-label fusion and synchronization, bag recorder.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'teacher_node = mmdistill_teachers.teacher_node:main',
            'pseudo_label_node = mmdistill_teachers.pseudo_label_node:main',
            'recorder_node = mmdistill_teachers.recorder_node:main',
        ],
    },
)
